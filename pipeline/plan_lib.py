"""What a run will do and cost, computed from its config alone.

`make_plan` resolves each training stage's length, batch layout, data
volume, input rate, checkpoint size and duration without reading an image
or starting a step; `//pipeline:plan` prints it (pipeline/plan.py).

Sources of the numbers:
- examples: an existing Examples artifact's properties, else
  `--expected_examples`, else the published size of the preset's dataset
  (configs/presets.py `DATASETS`), less the images ExampleGen holds out
  for validation when the dataset has no validation split;
- FLOPs: the forward pass of the variant at the stage's resolution and
  class count, counted on the traced graph (`coatnet_tf.describe`); a
  training step costs about 3x the forward pass (forward, and a backward
  pass of about twice the forward);
- step time: the step's FLOPs over the slice's bf16 peak
  (configs/tpu_topologies.py) at an assumed utilisation;
- bytes per example: the artifact's shard bytes, else a JPEG estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import tensorflow as tf

from components import base
from components.trainer import config as trainer_config
from configs import presets, tpu_topologies
from pipeline import config as config_lib
from pipeline import plan_checks

# A training step is ~3 forward passes (backward ~2x forward).
TRAIN_FLOPS_PER_FORWARD = 3
# Assumed share of the bf16 peak a CoAtNet step reaches on TPU.
DEFAULT_UTILIZATION = 0.4
# An original ImageNet JPEG averages ~110 KB (~400x350 px).
ORIGINAL_JPEG_BYTES = 110_000
# Re-encoded at quality 95, a photo takes ~1 byte per pixel; stored
# images are taken as 4:3.
JPEG_BYTES_PER_PIXEL = 1.0
FLOAT32_BYTES = 4
# AdamW keeps two slots (first and second moments) per trainable weight.
ADAM_SLOTS = 2


@dataclasses.dataclass(frozen=True)
class Examples:
    """The size of a stage's data and where the numbers came from."""

    train: int
    validation: int
    classes: int
    source: str
    bytes_per_example: float
    bytes_source: str
    shards: int = 0  # 0: as the ExampleGen config will write them.


def parse_stage_values(items: list[str], flag: str) -> dict[str, str]:
    """`stage=value` items (a bare value means pretrain).

    Raises:
      ValueError: an unknown stage, naming the flag.
    """
    out = {}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep:
            stage, value = "pretrain", item
        if stage not in presets.STAGES:
            raise ValueError(
                f"--{flag}={item!r}: expected [pretrain|finetune=]VALUE."
            )
        out[stage] = value
    return out


def _estimated_bytes(resize_shorter_side: int) -> float:
    if resize_shorter_side <= 0:
        return float(ORIGINAL_JPEG_BYTES)
    side = resize_shorter_side
    return side * (side * 4 / 3) * JPEG_BYTES_PER_PIXEL


def stage_examples(
    config: config_lib.PipelineConfig,
    stage: str,
    artifact_uri: str = "",
    expected: int = 0,
) -> Examples:
    """The stage's data size (see the module docstring for the order).

    Raises:
      ValueError: nothing gives the size: the message names the flags.
    """
    data = plan_checks.stage_data(config, stage)
    if artifact_uri:
        artifact = base.Artifact.read(artifact_uri, base.EXAMPLES)
        counts = artifact.properties["num_examples"]
        shards = tf.io.gfile.glob(f"{artifact_uri}/Split-train/*")
        size = sum(tf.io.gfile.stat(path).length for path in shards)
        train = int(counts.get("train", 0))
        return Examples(
            train=train,
            validation=int(counts.get("validation", 0)),
            classes=int(artifact.properties.get("num_classes", 0)),
            source=f"Examples artifact {artifact_uri}",
            bytes_per_example=size / max(train, 1),
            bytes_source="the artifact's train shards",
            shards=len(shards),
        )
    preset = presets.get_preset(config.preset)
    dataset = presets.DATASETS.get(preset["datasets"].get(stage, ""), {})
    name = preset["datasets"].get(stage, "")
    classes = dataset.get("classes", 0)
    labels = plan_checks.read_labels(data, f"{stage}_data.input")
    if labels:
        classes = len(labels)
    estimate = _estimated_bytes(data.resize_shorter_side)
    how = (
        f"JPEG q95 at a {data.resize_shorter_side} px shorter side"
        if data.resize_shorter_side
        else "an original ImageNet JPEG"
    )
    if expected:
        return Examples(
            expected, 0, classes, "--expected_examples", estimate, how
        )
    if not dataset:
        raise ValueError(
            f"{stage}: the {config.preset} preset names no dataset; give "
            f"--expected_examples={stage}=N or --examples={stage}=<Examples "
            "artifact>."
        )
    if "train" in dataset:
        train, validation = dataset["train"], dataset["validation"]
    else:
        images = dataset["images"]
        if data.validation_fraction > 0:
            validation = round(images * data.validation_fraction)
        else:
            validation = data.validation_per_class * classes
        train = images - validation
    return Examples(
        train, validation, classes, f"{name} (published)", estimate, how
    )


@functools.lru_cache(maxsize=16)
def counted_model(variant: str, image_size: int, classes: int) -> dict:
    """Parameters and forward FLOPs per image, counted on the graph."""
    from coatnet_tf import describe

    info = describe.describe(
        variant, num_classes=classes, image_size=image_size, flops=True
    )
    return {
        "params": int(info["params"]),
        "trainable_params": int(info["trainable_params"]),
        "forward_flops": 2 * int(info["forward_mult_adds"]),
    }


def stage_plan(
    config: config_lib.PipelineConfig,
    stage: str,
    examples: Examples,
    topology: tpu_topologies.Topology | None,
    utilization: float,
) -> dict[str, Any]:
    """One stage's numbers (see `make_plan`)."""
    trainer = getattr(config, stage)
    data = plan_checks.stage_data(config, stage)
    preset = presets.get_preset(config.preset)
    spec = preset["stages"].get(stage, {})
    batch = trainer.batch_size
    steps = trainer_config.resolve_steps(trainer, examples.train)
    per_epoch = examples.train / batch if examples.train else 0
    model = counted_model(
        trainer.model.variant, trainer.model.image_size, examples.classes
    )
    out: dict[str, Any] = {
        "stage": stage,
        "recipe": spec.get("recipe", ""),
        "paper_column": spec.get("paper_column", ""),
        "variant": trainer.model.variant,
        "image_size": trainer.model.image_size,
        "classes": examples.classes,
        "examples": examples.train,
        "validation_examples": examples.validation,
        "examples_source": examples.source,
        "global_batch": batch,
        "steps": steps.total,
        "warmup_steps": steps.warmup,
        "epochs": steps.total / per_epoch if per_epoch else 0.0,
        "images_seen": steps.total * batch,
        "shards": examples.shards or data.num_shards,
        "bytes_per_example": examples.bytes_per_example,
        "bytes_per_example_source": examples.bytes_source,
        "bytes_per_shard": examples.train
        * examples.bytes_per_example
        / (examples.shards or data.num_shards),
        "params": model["params"],
        "forward_flops_per_image": model["forward_flops"],
        "train_flops_per_step": TRAIN_FLOPS_PER_FORWARD
        * model["forward_flops"]
        * batch,
    }
    weights = model["params"] * FLOAT32_BYTES
    slots = ADAM_SLOTS * model["trainable_params"] * FLOAT32_BYTES
    ema = weights if trainer.optimizer.ema_decay > 0 else 0
    every = trainer.runtime.checkpoint_every_steps
    out["checkpoint"] = {
        "weights_bytes": weights,
        "optimizer_slot_bytes": slots,
        "ema_bytes": ema,
        "bytes": weights + slots + ema,
        "every_steps": every,
        "count": math.ceil(steps.total / every),
        "kept": trainer.runtime.keep_checkpoints,
    }
    if topology is not None:
        step_seconds = out["train_flops_per_step"] / (
            topology.peak_flops * utilization
        )
        per_host = batch / topology.hosts
        out.update(
            per_replica_batch=batch / topology.replicas,
            per_host_batch=per_host,
            step_seconds=step_seconds,
            host_images_per_second=per_host / step_seconds,
            host_bytes_per_second=per_host
            / step_seconds
            * examples.bytes_per_example,
            hours=steps.total * step_seconds / 3600,
        )
        out["checkpoint"]["every_minutes"] = every * step_seconds / 60
    return out


def make_plan(
    config: config_lib.PipelineConfig,
    stages: list[str],
    topology: tpu_topologies.Topology | None = None,
    utilization: float = DEFAULT_UTILIZATION,
    artifacts: dict[str, str] | None = None,
    expected: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The plan of a run: config diff, per-stage numbers, problems.

    Args:
      config: the resolved config.
      stages: the training stages the job runs.
      topology: the TPU slice, or None (no per-device or time numbers).
      utilization: assumed share of the bf16 peak.
      artifacts: Examples artifact URIs by stage.
      expected: expected training examples by stage.

    Returns:
      JSON-ready: preset, topology, utilization, diff, stages, problems,
      hours (all stages; None without a topology).

    Raises:
      ValueError: a stage's size is unknown, naming the flags to give.
    """
    artifacts = artifacts or {}
    expected = expected or {}
    plans = []
    for stage in stages:
        examples = stage_examples(
            config, stage, artifacts.get(stage, ""), expected.get(stage, 0)
        )
        plans.append(stage_plan(config, stage, examples, topology, utilization))
    replicas = topology.replicas if topology else 0
    found = plan_checks.missing_required(config) + plan_checks.problems(
        config, stages, replicas, on_tpu=topology is not None
    )
    return {
        "preset": config.preset,
        "topology": dataclasses.asdict(topology) if topology else None,
        "utilization": utilization,
        "diff": config_diff(config),
        "stages": plans,
        "problems": found,
        "hours": sum(p["hours"] for p in plans) if topology else None,
    }


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(k, str) for k in data)
    ):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def config_diff(config: config_lib.PipelineConfig) -> list[dict[str, Any]]:
    """The fields where `config` differs from its preset, sorted."""
    mine = _flatten(base.config_to_json(config))
    theirs = _flatten(
        base.config_to_json(config_lib.preset_config(config.preset))
    )
    return [
        {"field": k, "value": mine.get(k), "preset": theirs.get(k)}
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k) != theirs.get(k)
    ]


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(value) >= scale:
            return f"{value / scale:,.2f} {prefix}{unit}"
    if abs(value) >= 1e3:
        return f"{value / 1e3:,.1f} k{unit}"
    return f"{value:,.0f} {unit}"


def format_text(plan: dict[str, Any]) -> str:
    """The plan as the console text of `//pipeline:plan`."""
    lines = [f"Plan of preset {plan['preset']}"]
    topo = plan["topology"]
    if topo:
        lines.append(
            f"TPU {topo['name']}: {topo['chips']} chips, {topo['replicas']} "
            f"replicas, {topo['hosts']} hosts, "
            f"{topo['peak_tflops_per_chip']:g} bf16 TFLOP/s per chip peak, "
            f"assumed {plan['utilization']:.0%} of it"
        )
    else:
        lines.append("No --tpu_topology: no per-device or time estimates.")
    lines.append("")
    if plan["diff"]:
        lines.append("Config, as changed from the preset:")
        for d in plan["diff"]:
            lines.append(
                f"  {d['field']}: {d['value']!r} (preset: {d['preset']!r})"
            )
    else:
        lines.append("Config: the preset unchanged.")
    for s in plan["stages"]:
        column = (
            f", Table 10 {s['paper_column']!r}" if s["paper_column"] else ""
        )
        ck = s["checkpoint"]
        lines += [
            "",
            f"{s['stage']}: {s['variant']} at {s['image_size']} px, "
            f"{s['classes']:,} classes (recipe {s['recipe']}{column})",
            f"  examples        {s['examples']:,} train, "
            f"{s['validation_examples']:,} validation ({s['examples_source']})",
            f"  steps           {s['steps']:,} ({s['warmup_steps']:,} warmup)"
            f" = {s['epochs']:.2f} epochs, {s['images_seen']:,} images seen",
            f"  batch           {s['global_batch']:,} global"
            + (
                f", {s['per_replica_batch']:g} per replica, "
                f"{s['per_host_batch']:g} per host"
                if "per_host_batch" in s
                else ""
            ),
            f"  TFRecords       {s['shards']:,} train shards of "
            f"{_si(s['bytes_per_shard'], 'B')} "
            f"({_si(s['bytes_per_example'], 'B')} per example: "
            f"{s['bytes_per_example_source']})",
            f"  model           {s['params']:,} parameters, "
            f"{_si(s['forward_flops_per_image'], 'FLOP')} forward per image,"
            f" {_si(s['train_flops_per_step'], 'FLOP')} per training step",
            f"  checkpoint      {_si(ck['bytes'], 'B')} (weights "
            f"{_si(ck['weights_bytes'], 'B')}, optimizer slots "
            f"{_si(ck['optimizer_slot_bytes'], 'B')}, EMA "
            f"{_si(ck['ema_bytes'], 'B')}) every {ck['every_steps']:,} "
            f"steps"
            + (
                f" (~{ck['every_minutes']:.1f} min)"
                if "every_minutes" in ck
                else ""
            )
            + f", {ck['count']:,} saves, {ck['kept']} kept",
        ]
        if "step_seconds" in s:
            lines += [
                f"  step time       {s['step_seconds']:.3f} s (estimated)",
                f"  input per host  {s['host_images_per_second']:,.0f} "
                f"images/s, {_si(s['host_bytes_per_second'], 'B')}/s",
                f"  duration        {s['hours']:,.1f} hours",
            ]
    if plan["hours"] is not None:
        lines += ["", f"Whole run: {plan['hours']:,.1f} hours of training."]
    if plan["problems"]:
        lines += ["", "Refused: settings that cannot work:"]
        lines += [f"  - {p}" for p in plan["problems"]]
    return "\n".join(lines)
