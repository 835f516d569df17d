"""The pipelines' one typed config, its demo defaults and its overrides.

`PipelineConfig` holds every component's execution properties, so a run is
described by one document, written next to its outputs as
`<pipeline_root>/runs/<run_id>/config.json`. A run starts from
`demo_config()` (or `production_config()` for real data), then applies a
JSON `--config_file` (a partial tree of fields) and `--set a.b=value`
overrides, then the few first-class flags (`--input`, `--tpu`, ...).

The demo: the handwritten digits written as ImageNet-21K per-synset tars
(`pipeline/demo_data.py`), pretraining coatnet-tiny at 32 px on all ten
classes with the 21K recipe's sigmoid loss, then finetuning at 64 px on
five of them (the ImageNet-1K-inside-21K case, the head initialized from
the matching pretrain rows), evaluating, exporting and pushing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import configs
from components import base, cli
from components.evaluator import blessing as blessing_lib
from components.evaluator.component import EvaluatorConfig
from components.example_gen.config import ExampleGenConfig
from components.exporter.component import ExporterConfig
from components.pusher.component import PusherConfig
from components.trainer.config import TrainerConfig

DEMO_PRETRAIN_SIZE = 32
DEMO_FINETUNE_SIZE = 64
# The finetune label space: digits 0-4, a subset of the ten pretrain
# classes (written to <data>/finetune_synsets.txt by the demo).
DEMO_FINETUNE_CLASSES = 5


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything a pretrain, finetune or retrain run needs.

    Attributes:
      name: the pipeline's name; the default root is
        `$COATNET_HOME/<name>` (else `~/coatnet_runs/<name>`).
      pipeline_root: where artifacts, the ledger and reports go (local or
        gs://).
      serving_base: the model store TF Serving reads (default
        `<pipeline_root>/serving`).
      enable_cache: skip components whose inputs, config and code are
        unchanged.
      demo: write the built-in digits dataset when `data.input` is empty.
      demo_fraction: the share of the 1,797 digits the demo writes per span.
      data: ExampleGen for the pretraining data.
      finetune_data: ExampleGen for the finetuning data (empty input: the
        pretraining data restricted to `finetune_data.synsets`).
      pretrain: the pretraining Trainer.
      finetune: the finetuning Trainer (starts from the pretrain model).
      evaluator: the Evaluator of the pretrained model.
      finetune_evaluator: the Evaluator of the finetuned (served) model.
      exporter: the Exporter (its model_name is set per stage).
      pusher: the Pusher (serving_base and model_name set per stage).
      pretrain_model_name: the serving name of the pretrained model.
      model_name: the serving name of the finetuned model.
      run_finetune: the pretrain job goes on to finetune (the demo does).
    """

    name: str = "coatnet-demo"
    pipeline_root: str = ""
    serving_base: str = ""
    enable_cache: bool = True
    demo: bool = True
    demo_fraction: float = 1.0
    data: ExampleGenConfig = ExampleGenConfig(source="imagenet21k", input="")
    finetune_data: ExampleGenConfig = ExampleGenConfig(
        source="imagenet21k", input=""
    )
    pretrain: TrainerConfig = TrainerConfig()
    finetune: TrainerConfig = TrainerConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    finetune_evaluator: EvaluatorConfig = EvaluatorConfig()
    exporter: ExporterConfig = ExporterConfig()
    pusher: PusherConfig = PusherConfig()
    pretrain_model_name: str = "coatnet_pretrain"
    model_name: str = "coatnet"
    run_finetune: bool = True

    @property
    def root(self) -> str:
        if self.pipeline_root:
            return cli.resolve_user_path(self.pipeline_root)
        return os.path.join(cli.default_home(), self.name)

    @property
    def serving(self) -> str:
        if self.serving_base:
            return cli.resolve_user_path(self.serving_base)
        return os.path.join(self.root, "serving")


def demo_config() -> PipelineConfig:
    """The built-in demonstration: minutes on 2 CPU cores."""
    tiny = configs.get_config("tiny")
    pretrain = base.apply_overrides(
        tiny,
        {
            "model.image_size": DEMO_PRETRAIN_SIZE,
            # The 21K recipe's multi-label loss, at demo scale.
            "loss.kind": "sigmoid",
            "loss.label_smoothing": 1e-4,
            "batch_size": 32,
            "eval_batch_size": 64,
            "train_steps": 1200,
            "schedule.warmup_steps": 50,
            "schedule.decay": "linear",
            "optimizer.learning_rate": 3e-3,
            "optimizer.weight_decay": 0.01,
            "runtime.checkpoint_every_steps": 400,
            "runtime.log_every_steps": 100,
            "eval_every_steps": 400,
            # Digits are small and centred: an 8%-area inception crop or a
            # mirror image loses the class, and a -10 head bias (the 21K
            # prior for ~20K classes) starves ten classes of gradient.
            "augment.randaug_layers": 1,
            "augment.randaug_magnitude": 3.0,
            "augment.crop_area_range": [0.5, 1.0],
            "augment.flip": False,
            "model.head_init_bias": -2.2,
        },
    )
    finetune = base.apply_overrides(
        pretrain,
        {
            "model.image_size": DEMO_FINETUNE_SIZE,
            # Finetuning recipe (Table 10): softmax, constant lr, EMA.
            "loss.kind": "softmax",
            "loss.label_smoothing": 0.1,
            "train_steps": 300,
            "schedule.decay": "constant",
            "schedule.warmup_steps": 0,
            "optimizer.learning_rate": 5e-4,
            "optimizer.weight_decay": 1e-8,
            "optimizer.ema_decay": 0.99,
            "finetune.head_rows": "auto",
            "model.head_init_bias": 0.0,
        },
    )
    data = ExampleGenConfig(
        source="imagenet21k",
        input="",
        validation_per_class=30,
        num_shards=4,
        num_eval_shards=2,
        num_workers=2,
    )
    return PipelineConfig(
        data=data,
        finetune_data=dataclasses.replace(data),
        pretrain=pretrain,
        finetune=finetune,
        evaluator=EvaluatorConfig(
            split="validation",
            thresholds=blessing_lib.thresholds_from_json(
                # Twice chance for ten classes: the demo's tiny pretraining
                # reached 0.33 and 0.49 in two runs of 1,200 steps.
                [{"metric": "precision_at_1", "lower_bound": 0.2}]
            ),
        ),
        finetune_evaluator=EvaluatorConfig(
            split="validation",
            thresholds=blessing_lib.thresholds_from_json(
                [
                    {"metric": "top1", "lower_bound": 0.5},
                    {
                        "metric": "top1",
                        "direction": "higher_is_better",
                        "absolute": -0.02,
                    },
                ]
            ),
        ),
        exporter=ExporterConfig(warmup_split="validation"),
    )


def apply(config: PipelineConfig, overrides: Mapping[str, Any]) -> Any:
    """`config` with nested or dotted overrides applied (see
    `components.base.apply_overrides`)."""
    return base.apply_overrides(config, overrides)


def check(config: PipelineConfig) -> None:
    """Validates the component configs that can be checked up front.

    Raises:
      ValueError: naming the offending field.
    """
    if not config.demo and not config.data.input:
        raise ValueError("data.input (--input) is required unless --demo.")
    for name in ("data", "finetune_data"):
        part = getattr(config, name)
        if part.input:
            try:
                part.validate()
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
