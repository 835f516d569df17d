"""What makes a training run this run: recorded beside its checkpoints.

A Model directory's checkpoints are resumed by whatever run is started with
that `--output`. Resuming is right only for the run that wrote them: with
other examples, another model or other hyperparameters, the restored state
would be silently continued under the new settings. So the Trainer writes
`<model>/checkpoints/run_fingerprint.json` before its first checkpoint and,
when it finds checkpoints, refuses to resume unless the fingerprint it
computes now is the recorded one (`check_or_record`).

The fingerprint holds:

- `config`: the resolved TrainerConfig without the fields in `IGNORED`,
  which change how a run is observed or scheduled on the machine but not
  the numbers it computes (logging, checkpoint and evaluation cadence,
  input parallelism, the TPU's address), nor the training length:
  `train_steps`/`train_epochs` may grow, so that a finished run can be
  continued for longer (the schedule is then recomputed for the new
  length from the resumed step on);
- `examples`: the Examples artifact's URI and a digest of its
  `_artifact.json` (type and properties: splits, counts, label space);
- `base_model`: the same for the Model finetuned from, if any;
- `model_spec`: the network (`model_io.ModelSpec`), when known.

`digest` turns a fingerprint into a short hash: the CLI's default
`--output` ends with it, so that runs with different settings get
different directories.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import tensorflow as tf

from components import base
from components.trainer import config as config_lib

FILE = "run_fingerprint.json"

# Config fields (dotted) that do not change what a run computes.
IGNORED = frozenset(
    {
        "train_steps",
        "train_epochs",
        "eval_batch_size",
        "eval_every_steps",
        "eval_steps",
        "data.eval_split",
        "data.num_parallel_calls",
        "data.prefetch_batches",
        "data.private_threadpool_size",
        "runtime.checkpoint_every_steps",
        "runtime.keep_checkpoints",
        "runtime.log_every_steps",
        "runtime.max_nonfinite_steps",
        "runtime.steps_per_execution",
        "runtime.tpu",
        "runtime.zone",
        "runtime.project",
    }
)


class RunMismatchError(ValueError):
    """The output directory holds checkpoints of a different run."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _artifact(artifact: base.Artifact | None) -> dict[str, Any] | None:
    if artifact is None:
        return None
    content = json.dumps(
        {"type_name": artifact.type_name, "properties": artifact.properties},
        sort_keys=True,
        default=str,
    )
    return {
        "uri": artifact.uri,
        "digest": hashlib.sha256(content.encode()).hexdigest()[:16],
    }


def compute(
    config: config_lib.TrainerConfig,
    examples: base.Artifact,
    base_model: base.Artifact | None = None,
    model_spec: Any = None,
) -> dict[str, Any]:
    """The fingerprint of a run.

    Args:
      config: the resolved config.
      examples: the Examples artifact trained on.
      base_model: the Model artifact finetuned from, if any.
      model_spec: the network's `ModelSpec` (a dataclass), if known.

    Returns:
      A JSON-ready dict of flat "section.field" keys to values.
    """
    flat = _flatten(base.config_to_json(config))
    data = {
        f"config.{k}": v for k, v in sorted(flat.items()) if k not in IGNORED
    }
    data["examples"] = _artifact(examples)
    data["base_model"] = _artifact(base_model)
    if model_spec is not None:
        spec = json.loads(
            json.dumps(dataclasses.asdict(model_spec), default=str)
        )
        for key, value in sorted(_flatten(spec).items()):
            data[f"model_spec.{key}"] = value
    # As it reads back from the file (tuples become lists).
    return json.loads(json.dumps(data, default=str))


def digest(fingerprint: dict[str, Any]) -> str:
    """A 12-hex-digit hash of a fingerprint."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lines "key: recorded -> current" for every key that differs."""
    lines = []
    for key in sorted(set(recorded) | set(current)):
        was, now = recorded.get(key, "<absent>"), current.get(key, "<absent>")
        if was != now:
            lines.append(f"  {key}: {was!r} -> {now!r}")
    return lines


def check_or_record(
    checkpoint_dir: str,
    fingerprint: dict[str, Any],
    has_checkpoints: bool,
    write: bool = True,
) -> None:
    """Refuses to resume another run's checkpoints; records a new run's.

    Args:
      checkpoint_dir: the run's checkpoint directory.
      fingerprint: this run's `compute(...)`.
      has_checkpoints: the directory holds a checkpoint to resume from.
      write: record the fingerprint when starting afresh (the chief).

    Raises:
      RunMismatchError: there are checkpoints, and the recorded
        fingerprint is missing or differs from this run's.
    """
    path = os.path.join(checkpoint_dir, FILE)
    output = os.path.dirname(checkpoint_dir.rstrip("/"))
    advice = (
        "To train this configuration, pass a new --output (or delete "
        f"{output}); to resume the recorded run, start it with its own "
        f"settings (its config is in {path})."
    )
    if has_checkpoints:
        if not tf.io.gfile.exists(path):
            raise RunMismatchError(
                f"{checkpoint_dir} holds checkpoints but no {FILE}: they "
                "were not written by a run this Trainer can verify, so it "
                f"will not resume them. {advice}"
            )
        recorded = base.read_json(path)
        lines = differences(recorded, fingerprint)
        if lines:
            raise RunMismatchError(
                f"{checkpoint_dir} holds checkpoints of a different run; "
                "these settings differ (recorded -> now):\n"
                + "\n".join(lines)
                + f"\n{advice}"
            )
        return
    if write:
        # Before the first checkpoint: a run killed before it leaves no
        # checkpoint, and the next start records its own fingerprint.
        base.write_json(path, fingerprint)
