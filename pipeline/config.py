"""The pipelines' one typed config, its demo defaults and its overrides.

`PipelineConfig` holds every component's execution properties, so a run is
described by one document, written next to its outputs as
`<pipeline_root>/runs/<run_id>/config.json`. A run starts from a preset of
configs/presets.py (`preset_config`): per stage a paper recipe with a few
overrides, the ExampleGen settings and the blessing gates. Then come a
JSON `--config_file` (a partial tree of fields, optionally naming its
preset under "base"), `--set a.b=value` overrides and the few first-class
flags (`--input`, `--tpu`, ...); see pipeline/flags_lib.py.

The demo (the `demo` preset): the handwritten digits written as
ImageNet-21K per-synset tars (`pipeline/demo_data.py`), pretraining
coatnet-tiny at 32 px on all ten classes with the 21K recipe's sigmoid
loss, then finetuning at 64 px on five of them (the
ImageNet-1K-inside-21K case, the head initialized from the matching
pretrain rows), evaluating, exporting and pushing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from components import base, cli
from components.evaluator.component import EvaluatorConfig
from components.example_gen.config import ExampleGenConfig
from components.exporter.component import ExporterConfig
from components.pusher.component import PusherConfig
from components.trainer.config import TrainerConfig
from configs import presets

# The finetune label space: digits 0-4, a subset of the ten pretrain
# classes (written to <data>/finetune_synsets.txt by the demo).
DEMO_FINETUNE_CLASSES = 5


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything a pretrain, finetune or retrain run needs.

    Attributes:
      preset: the preset of configs/presets.py the config started from.
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

    preset: str = presets.DEFAULT
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


def preset_config(
    name: str, overrides: Mapping[str, Any] | None = None
) -> PipelineConfig:
    """A preset of configs/presets.py as a `PipelineConfig`.

    Each stage starts from its recipe (`presets.stage_config`: the recipe,
    the preset's overrides, and its per-variant overrides for the variant
    the stage ends up with); then `overrides` (dotted `PipelineConfig`
    paths, e.g. from flags) are applied, so the user's values win.

    Args:
      name: a preset name.
      overrides: dotted field paths to values, applied last.

    Returns:
      The config, with `preset` set to `name`.

    Raises:
      ValueError: unknown preset, or a field the preset or `overrides`
        names is unknown or its value does not parse (naming the preset
        and stage).
    """
    preset = presets.get_preset(name)
    overrides = dict(overrides or {})
    config = _build(name, preset, overrides, {})
    # Again from the recipes, now that each stage's variant is known, so
    # that the per-variant values of that variant (and no other) apply.
    variants = {
        stage: getattr(config, stage).model.variant
        for stage in preset["stages"]
    }
    return _build(name, preset, overrides, variants)


def _build(name, preset, overrides, variants) -> PipelineConfig:
    stages = preset["stages"]
    fields: dict[str, Any] = {"preset": name}
    for stage in ("pretrain", "finetune"):
        # A preset without a finetune stage keeps a copy of its pretraining
        # recipe there (never run unless `run_finetune` is set).
        fields[stage] = presets.stage_config(
            name,
            stage if stage in stages else "pretrain",
            variants.get(stage, ""),
        )
    pipeline = dict(preset.get("pipeline", {}))
    for key in ("data", "finetune_data"):
        if key in pipeline:
            fields[key] = ExampleGenConfig(**pipeline.pop(key))
    for key in ("evaluator", "finetune_evaluator"):
        if key in pipeline:
            fields[key] = EvaluatorConfig(**pipeline.pop(key))
    config = dataclasses.replace(PipelineConfig(), **pipeline, **fields)
    try:
        return apply(config, overrides)
    except ValueError as e:
        raise ValueError(f"Preset {name!r}: {e}") from e


def demo_config() -> PipelineConfig:
    """The built-in demonstration (the `demo` preset): minutes on 2 CPU
    cores."""
    return preset_config(presets.DEFAULT)


def stage_recipe(config: PipelineConfig, stage: str) -> TrainerConfig:
    """The trainer config a stage of `config`'s preset starts from: its
    recipe with the preset's overrides, before any user override."""
    return getattr(preset_config(config.preset), stage)


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


def stage_names(config: PipelineConfig, job: str) -> list[str]:
    """The training stages `job` runs under `config`.

    Args:
      config: the resolved pipeline config.
      job: pretrain, finetune or retrain.

    Returns:
      The stage names ("pretrain", "finetune") in the order they run.
    """
    if job == "finetune":
        return ["finetune"]
    if job == "retrain":
        return ["finetune"] if config.run_finetune else ["pretrain"]
    return ["pretrain", "finetune"] if config.run_finetune else ["pretrain"]
