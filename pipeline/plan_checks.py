"""Settings that cannot work, found before any image is read.

Each check names both settings in conflict, as the flag a user would
change (`--finetune_image_size`) and the field it sets, and says what to
do. `//pipeline:plan` reports them all; the pipeline binaries refuse to
start on the first (`refuse`).
"""

from __future__ import annotations

import os

import tensorflow as tf

from components.example_gen import spans
from configs import presets
from pipeline import config as config_lib

# The flag that sets each field, for the messages.
_FLAG_OF = {
    "pretrain.model.image_size": "--pretrain_image_size",
    "finetune.model.image_size": "--finetune_image_size",
    "pretrain.model.variant": "--variant",
    "finetune.model.variant": "--variant",
    "pretrain.runtime.strategy": "--strategy",
    "finetune.runtime.strategy": "--strategy",
    "data.input": "--input",
    "finetune_data.input": "--finetune_input",
    "finetune_data.synsets": "--finetune_synsets",
}


def flag_of(field: str) -> str:
    """How a user sets `field`: its first-class flag, else `--set`."""
    return _FLAG_OF.get(field, f"--set={field}=...")


def _named(field: str, value) -> str:
    return f"{flag_of(field)} ({field}={value})"


def stage_data(config: config_lib.PipelineConfig, stage: str):
    """The ExampleGen config feeding `stage`."""
    return config.data if stage == "pretrain" else config.finetune_data


def problems(
    config: config_lib.PipelineConfig,
    stages: list[str],
    replicas: int = 0,
    on_tpu: bool = False,
) -> list[str]:
    """Every setting of `config` that cannot work, as messages.

    Args:
      config: the resolved config.
      stages: the training stages that will run.
      replicas: the replica count when known (a named topology), else 0.
      on_tpu: the run is planned on a TPU even if no strategy says so.

    Returns:
      One message per problem; empty when none.
    """
    found = []
    for stage in stages:
        trainer = getattr(config, stage)
        data = stage_data(config, stage)
        data_name = "data" if stage == "pretrain" else "finetune_data"
        size = trainer.model.image_size
        stored = data.resize_shorter_side
        if 0 < stored < size:
            found.append(
                f"{stage}: images are stored with a shorter side of "
                f"{stored} px "
                f"({_named(f'{data_name}.resize_shorter_side', stored)}"
                f"), below the {stage} resolution "
                f"{_named(f'{stage}.model.image_size', size)}: every "
                "image would be upscaled. Store at least the training "
                "resolution (0 keeps the originals) or train lower."
            )
        model = trainer.model
        if (
            model.drop_path_rate is None
            and model.variant not in model.drop_path_by_variant
        ):
            found.append(
                f"{stage}: {_named(f'{stage}.model.variant', model.variant)} "
                "has no stochastic depth rate in "
                f"{stage}.model.drop_path_by_variant (the recipe lists "
                f"{sorted(model.drop_path_by_variant)}); set "
                f"--set={stage}.model.drop_path_rate=R or pick a listed "
                "variant."
            )
        if replicas and trainer.batch_size % replicas:
            found.append(
                f"{stage}: the global batch "
                f"{_named(f'{stage}.batch_size', trainer.batch_size)} does "
                f"not divide over the {replicas} replicas of --tpu_topology;"
                " choose a multiple of the replica count."
            )
        tpu = on_tpu or trainer.runtime.strategy == "tpu"
        recipe = config_lib.stage_recipe(config, stage).runtime.precision
        if (
            tpu
            and trainer.runtime.precision == "float32"
            and recipe in ("auto", "mixed_bfloat16")
        ):
            found.append(
                f"{stage}: "
                f"{_named(f'{stage}.runtime.precision', 'float32')} on a "
                f"TPU ({_named(f'{stage}.runtime.strategy', 'tpu')} or "
                "--tpu_topology), where the recipe trains in bfloat16 "
                f"(runtime.precision={recipe}); float32 halves the MXU "
                "rate and doubles activation memory. Drop the override."
            )
    if "finetune" in stages and config.finetune.finetune.head_rows == "match":
        found += _head_rows_problems(config)
    return found


def missing_required(config: config_lib.PipelineConfig) -> list[str]:
    """The fields the preset needs that are empty, as messages."""
    if not config.preset:
        return []
    preset = presets.get_preset(config.preset)
    out = []
    for field in preset.get("requires", []):
        part, _, name = field.partition(".")
        if not getattr(getattr(config, part), name):
            out.append(
                f"The {config.preset} preset needs {flag_of(field)} ({field})."
            )
    return out


def refuse(config: config_lib.PipelineConfig, job: str) -> None:
    """Raises on the first setting that cannot work (for the binaries).

    Raises:
      ValueError: naming both settings in conflict.
    """
    found = missing_required(config) + problems(
        config, config_lib.stage_names(config, job)
    )
    if found:
        raise ValueError("\n".join(found))


def read_labels(data, pattern_field: str) -> list[str] | None:
    """The class names an ExampleGen config will produce, if knowable
    without reading images: its synsets file, else the class folders or
    per-synset tars of a local or gs:// input. None when unknown."""
    try:
        return _read_labels(data, pattern_field)
    except (tf.errors.OpError, ValueError):
        return None  # Unreachable or not there yet: not checked.


def _read_labels(data, pattern_field: str) -> list[str] | None:
    if data.synsets:
        with tf.io.gfile.GFile(data.synsets) as f:
            return [
                line.split()[0]
                for line in f
                if line.strip() and not line.startswith("#")
            ]
    if data.source not in ("imagenet21k", "image_folder") or not data.input:
        return None
    root = data.input
    if spans.has_span(root):
        root = spans.resolve(root, flag=pattern_field).pattern
    if not tf.io.gfile.isdir(root):
        return None
    names = tf.io.gfile.listdir(root)
    if data.source == "imagenet21k":
        return sorted(n[: -len(".tar")] for n in names if n.endswith(".tar"))
    return sorted(
        n.rstrip("/")
        for n in names
        if tf.io.gfile.isdir(os.path.join(root, n.rstrip("/")))
    )


def _head_rows_problems(config: config_lib.PipelineConfig) -> list[str]:
    finetune_data = config.finetune_data
    if not finetune_data.input and not finetune_data.synsets:
        finetune_data = config.data  # The runner's fallback.
    source = read_labels(config.data, "data.input")
    target = read_labels(finetune_data, "finetune_data.input")
    if source is None or target is None:
        return []
    missing = sorted(set(target) - set(source))
    if not missing:
        return []
    return [
        f"finetune: {len(missing)} of the {len(target)} finetune classes "
        f"({flag_of('finetune_data.input')} / "
        f"{flag_of('finetune_data.synsets')}) are not among the "
        f"{len(source)} pretraining labels ({flag_of('data.input')}), "
        f"e.g. {missing[:5]}, but "
        f"{_named('finetune.finetune.head_rows', 'match')} asks to take "
        "every class's head row from the pretrained classifier. Use a "
        "pretraining release that holds them, drop those classes, or set "
        "--set=finetune.finetune.head_rows=auto (a new head)."
    ]
