"""Pipeline presets as data: which recipe each stage starts from, and how.

A preset is a small diff against the recipes of this package (big_vision's
habit: a config is a recipe plus a few overrides). Per stage it names the
recipe, its dotted overrides, per-variant overrides (Table 10 gives some
values per model size), and the paper's Table 10 column the stage follows.
Beside the stages it gives the ExampleGen settings of the pretraining and
finetuning data, the blessing gates, and the datasets whose published
sizes the plan (`//pipeline:plan`) uses when no Examples artifact exists.

`pipeline/config.py:preset_config` turns a preset into a `PipelineConfig`;
`validate` checks the data's shape here, and building every preset (the
tests do) checks every field name and value.

  demo         the digits in ImageNet-21K layout, coatnet-tiny, minutes on
               a CPU (the default when no --input is given).
  i21k_to_i1k  ImageNet-21K pretraining at 224, then ImageNet-1K
               finetuning at 384 with the 1K classes taken from the 21K
               head: the paper's main path.
  i1k          ImageNet-1K from scratch at 224, evaluated on the 1K
               validation set (no finetune stage).
  jft_to_i1k   JFT pretraining at 224, then ImageNet-1K finetuning at 384.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import configs

# Published sizes, for planning before any data is converted.
#   imagenet1k: ILSVRC-2012 (Russakovsky et al. 2015), 1,281,167 training
#     and 50,000 validation images in 1,000 classes.
#   imagenet21k_winter21: the current image-net.org release, about 13.2M
#     images (13,153,500) in 19,167 classes (no validation split; the
#     ExampleGen holds `validation_per_class` images of each class out).
#   imagenet21k_fall11: the release the paper's era used, about 14.2M
#     images (14,197,122) in 21,841 classes.
#   jft300m: Sun et al. 2017, about 300M images in 18,291 classes.
DATASETS: dict[str, dict[str, int]] = {
    "imagenet1k": {
        "train": 1_281_167,
        "validation": 50_000,
        "classes": 1_000,
    },
    "imagenet21k_winter21": {"images": 13_153_500, "classes": 19_167},
    "imagenet21k_fall11": {"images": 14_197_122, "classes": 21_841},
    "jft300m": {"images": 300_000_000, "classes": 18_291},
}

STAGES = ("pretrain", "finetune")
# PipelineConfig fields a preset may set besides its stages.
PIPELINE_KEYS = (
    "name",
    "demo",
    "run_finetune",
    "data",
    "finetune_data",
    "evaluator",
    "finetune_evaluator",
    "pretrain_model_name",
    "model_name",
)
STAGE_KEYS = ("recipe", "paper_column", "overrides", "by_variant")
PRESET_KEYS = ("description", "stages", "pipeline", "datasets", "requires")


def _gates(metric: str, floor: float, margin: float) -> list[dict]:
    """A value floor plus no regression beyond `margin` against the served
    baseline (the change check is skipped while nothing is served)."""
    return [
        {"metric": metric, "lower_bound": floor},
        {
            "metric": metric,
            "direction": "higher_is_better",
            "absolute": -margin,
        },
    ]


# The demo at CPU scale: the tiny recipe with the 21K recipe's loss.
_DEMO_PRETRAIN = {
    "model.image_size": 32,
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
    # Digits are small and centred: an 8%-area inception crop or a mirror
    # image loses the class, and a -10 head bias (the 21K prior for ~20K
    # classes) starves ten classes of gradient.
    "augment.randaug_layers": 1,
    "augment.randaug_magnitude": 3.0,
    "augment.crop_area_range": [0.5, 1.0],
    "augment.flip": False,
    "model.head_init_bias": -2.2,
}
_DEMO_FINETUNE = {
    **_DEMO_PRETRAIN,
    "model.image_size": 64,
    # The finetuning recipe of Table 10: softmax, constant lr, EMA.
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
}
_DEMO_DATA = {
    "source": "imagenet21k",
    "input": "",
    "validation_per_class": 30,
    "num_shards": 4,
    "num_eval_shards": 2,
    "num_workers": 2,
}

# ImageNet-1K as ILSVRC-2012's class folders (`<root>/<synset>/*.JPEG`);
# its 50,000 validation images with `validation_input` and
# `validation_labels`, else held out per class.
_I1K_DATA = {
    "source": "image_folder",
    "input": "",
    # ~110 KB per original JPEG: ~140 MB per shard.
    "num_shards": 1024,
    "num_eval_shards": 64,
}

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "description": "The digits in ImageNet-21K layout: coatnet-tiny "
        "pretrained at 32 px on ten classes, finetuned at 64 px on five.",
        "stages": {
            "pretrain": {
                "recipe": "tiny",
                "paper_column": "",
                "overrides": _DEMO_PRETRAIN,
            },
            "finetune": {
                "recipe": "tiny",
                "paper_column": "",
                "overrides": _DEMO_FINETUNE,
            },
        },
        "pipeline": {
            "name": "coatnet-demo",
            "demo": True,
            "data": _DEMO_DATA,
            "finetune_data": _DEMO_DATA,
            "evaluator": {
                "split": "validation",
                # Twice chance for ten classes: the demo's tiny pretraining
                # reached 0.33 and 0.49 in two runs of 1,200 steps.
                "thresholds": [
                    {"metric": "precision_at_1", "lower_bound": 0.2}
                ],
            },
            "finetune_evaluator": {
                "split": "validation",
                "thresholds": _gates("top1", 0.5, 0.02),
            },
        },
        "datasets": {},
        "requires": [],
    },
    "i21k_to_i1k": {
        "description": "ImageNet-21K pretraining at 224 (sigmoid, 90 "
        "epochs), then ImageNet-1K finetuning at 384 (30 epochs) with the "
        "1K classes taken from the 21K head.",
        "stages": {
            "pretrain": {
                "recipe": "pretrain_i21k",
                "paper_column": "21K pre-train",
                "overrides": {},
            },
            "finetune": {
                "recipe": "finetune_i1k_384",
                "paper_column": "21K->1K fine-tune",
                # Every 1K synset must be found among the 21K labels.
                "overrides": {"finetune.head_rows": "match"},
            },
        },
        "pipeline": {
            "name": "coatnet-i21k-to-i1k",
            "demo": False,
            "data": {
                "source": "imagenet21k",
                "input": "",
                "validation_per_class": 50,
                # Stored at 256 (~70 KB per image): ~200 MB per shard.
                "resize_shorter_side": 256,
                "num_shards": 4096,
                "num_eval_shards": 256,
            },
            "finetune_data": _I1K_DATA,
            # Precision@1 over ~20K classes; the paper states no 21K
            # number, so the floor only catches a broken run.
            "evaluator": {
                "split": "validation",
                "thresholds": _gates("precision_at_1", 0.2, 0.01),
            },
            # Paper: 87.1% top-1 for CoAtNet-2 at 384.
            "finetune_evaluator": {
                "split": "validation",
                "thresholds": _gates("top1", 0.8, 0.005),
            },
        },
        "datasets": {
            "pretrain": "imagenet21k_winter21",
            "finetune": "imagenet1k",
        },
        # ImageNet-1K's own 50,000 validation images, as Table 10's
        # numbers are: a class-folder tree (or a flat folder with
        # finetune_data.validation_labels).
        "requires": ["finetune_data.input", "finetune_data.validation_input"],
    },
    "i1k": {
        "description": "ImageNet-1K from scratch at 224 (300 epochs), "
        "evaluated on the 1K validation set.",
        "stages": {
            "pretrain": {
                "recipe": "pretrain_i1k",
                "paper_column": "1K pre-train",
                "overrides": {},
            },
        },
        "pipeline": {
            "name": "coatnet-i1k",
            "demo": False,
            "run_finetune": False,
            "data": _I1K_DATA,
            "finetune_data": _I1K_DATA,
            # Paper: 81.6% top-1 for CoAtNet-0 at 224.
            "evaluator": {
                "split": "validation",
                "thresholds": _gates("top1", 0.75, 0.005),
            },
        },
        "datasets": {"pretrain": "imagenet1k"},
        "requires": ["data.validation_input"],
    },
    "jft_to_i1k": {
        "description": "JFT pretraining at 224 (sigmoid, 14 epochs), then "
        "ImageNet-1K finetuning at 384 (30 epochs).",
        "stages": {
            "pretrain": {
                "recipe": "pretrain_jft",
                "paper_column": "JFT pre-train",
                "overrides": {},
                "by_variant": {
                    "coatnet-4": {"optimizer.learning_rate": 5e-4},
                    "coatnet-5": {"optimizer.learning_rate": 5e-4},
                },
            },
            "finetune": {
                "recipe": "finetune_jft_i1k",
                "paper_column": "JFT->1K fine-tune",
                # JFT's labels are not ImageNet synsets: a new head.
                "overrides": {"finetune.head_rows": "none"},
            },
        },
        "pipeline": {
            "name": "coatnet-jft-to-i1k",
            "demo": False,
            "data": {
                "source": "jft",
                "input": "",
                "resize_shorter_side": 256,
                "num_shards": 65536,
                "num_eval_shards": 1024,
            },
            "finetune_data": _I1K_DATA,
            "evaluator": {
                "split": "validation",
                "thresholds": _gates("precision_at_1", 0.2, 0.01),
            },
            # Paper: 88.5% and up at 384 for CoAtNet-3 and larger.
            "finetune_evaluator": {
                "split": "validation",
                "thresholds": _gates("top1", 0.8, 0.005),
            },
        },
        "datasets": {"pretrain": "jft300m", "finetune": "imagenet1k"},
        "requires": [
            "finetune_data.input",
            "finetune_data.validation_input",
            "data.labels_vocab",
        ],
    },
}

# With no data given, the pipeline binaries run this one.
DEFAULT = "demo"


def list_presets() -> list[str]:
    """Names `get_preset` accepts."""
    return list(PRESETS)


def describe_presets() -> str:
    """One line per preset, for usage messages."""
    return "\n".join(
        f"  {name:<12} {p['description']}" for name, p in PRESETS.items()
    )


def get_preset(name: str) -> Mapping[str, Any]:
    """A validated preset.

    Args:
      name: one of `list_presets()`.

    Returns:
      The preset's data (do not modify).

    Raises:
      ValueError: unknown name, or the preset's data is malformed.
    """
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}; known presets:\n{describe_presets()}"
        )
    validate(name, PRESETS[name])
    return PRESETS[name]


def stage_config(name: str, stage: str, variant: str = ""):
    """The `TrainerConfig` a preset's stage starts from.

    Its recipe with the preset's overrides, then (with `variant`) that
    variant and the preset's per-variant overrides for it.

    Args:
      name: a preset name.
      stage: "pretrain" or "finetune".
      variant: a coatnet_tf variant; "" keeps the recipe's.

    Returns:
      A `components.trainer.config.TrainerConfig`.

    Raises:
      ValueError: unknown preset or stage, or a field that does not apply.
    """
    from components import base

    stages = get_preset(name)["stages"]
    if stage not in stages:
        raise ValueError(
            f"Preset {name!r} has no {stage!r} stage; it has {list(stages)}."
        )
    spec = stages[stage]
    try:
        config = base.apply_overrides(
            configs.get_config(spec["recipe"]), spec.get("overrides", {})
        )
        if variant:
            config = base.apply_overrides(config, {"model.variant": variant})
        by_variant = spec.get("by_variant", {})
        return base.apply_overrides(
            config, by_variant.get(config.model.variant, {})
        )
    except ValueError as e:
        raise ValueError(f"Preset {name!r}, stage {stage}: {e}") from e


def validate(name: str, preset: Mapping[str, Any]) -> None:
    """Checks a preset's shape: keys, recipe names, stages and datasets.

    Raises:
      ValueError: naming the preset and the offending key.
    """

    def unknown(where: str, keys, allowed) -> None:
        extra = sorted(set(keys) - set(allowed))
        if extra:
            raise ValueError(
                f"Preset {name!r}: unknown keys {extra} in {where}; "
                f"expected some of {list(allowed)}."
            )

    unknown("the preset", preset, PRESET_KEYS)
    stages = preset.get("stages") or {}
    unknown("stages", stages, STAGES)
    if "pretrain" not in stages:
        raise ValueError(f"Preset {name!r}: no pretrain stage.")
    for stage, spec in stages.items():
        unknown(f"stages.{stage}", spec, STAGE_KEYS)
        if spec.get("recipe") not in configs.list_configs():
            raise ValueError(
                f"Preset {name!r}: stages.{stage}.recipe="
                f"{spec.get('recipe')!r} is not one of "
                f"{configs.list_configs()}."
            )
    pipeline = preset.get("pipeline") or {}
    unknown("pipeline", pipeline, PIPELINE_KEYS)
    if pipeline.get("run_finetune", True) and "finetune" not in stages:
        raise ValueError(
            f"Preset {name!r} runs a finetune stage but defines none."
        )
    for stage, dataset in (preset.get("datasets") or {}).items():
        if stage not in stages or dataset not in DATASETS:
            raise ValueError(
                f"Preset {name!r}: datasets.{stage}={dataset!r}; expected "
                f"a stage of the preset and one of {list(DATASETS)}."
            )
