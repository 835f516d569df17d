"""The run report: a final table on the console and Markdown with PNGs.

For each training stage of a run: resolution, the evaluation's headline
metric, blessing, pushed version and artifact paths. Pictures where they
say more than a table: training curves (from the Trainer's TensorBoard
logs), the Evaluator's confusion matrix, and a relative-position bias table
of the pretrained model before and after it is resized to the finetune
grid (the paper's App. A.1 bilinear resize, `coatnet_tf`).
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Headless: files only.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from artifacts import blessing as blessing_lib  # noqa: E402
from artifacts import (
    core,  # noqa: E402
    model_store,  # noqa: E402
)
from artifacts import evaluation as evaluation_lib  # noqa: E402
from artifacts import model as model_io  # noqa: E402


@dataclasses.dataclass
class StageRow:
    """One line of the final table."""

    stage: str
    resolution: int
    metric: str
    value: float | None
    blessed: int | None
    pushed_version: int | None
    model_uri: str
    serving_dir: str


def stage_row(stage: str, outputs: Mapping[str, Mapping[str, Any]]) -> StageRow:
    """Collects a stage's figures from its node outputs.

    Args:
      stage: the stage name ("pretrain", "finetune", "retrain").
      outputs: node id to {output key: Artifact} of the run.

    Returns:
      The table row.
    """
    model = outputs[f"Trainer.{stage}"]["model"]
    evaluation = outputs[f"Evaluator.{stage}"]["evaluation"]
    blessing = outputs[f"Evaluator.{stage}"]["blessing"]
    pushed = outputs[f"Pusher.{stage}"]["pushed_model"]
    spec = model_io.read_spec(model.uri)
    metrics = evaluation_lib.main_metrics(evaluation.uri)
    metric = "precision_at_1" if spec.multi_label else "top1"
    push = model_store.PushedModel.of(pushed)
    return StageRow(
        stage=stage,
        resolution=spec.image_size,
        metric=metric,
        value=metrics.get(metric),
        blessed=blessing_lib.blessed_property(blessing),
        pushed_version=push.version,
        model_uri=model.uri,
        serving_dir=push.destination,
    )


def format_table(rows: Sequence[StageRow]) -> str:
    """The console table: stage, resolution, accuracy, artifact paths."""
    header = ("stage", "res", "accuracy", "blessed", "pushed", "model")
    lines = [header]
    for r in rows:
        value = "-" if r.value is None else f"{r.metric}={r.value:.3f}"
        lines.append(
            (
                r.stage,
                str(r.resolution),
                value,
                {1: "yes", 0: "no"}.get(r.blessed, "-"),
                r.serving_dir or "-",
                r.model_uri,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
        for line in lines
    )


def write_report(
    run_dir: str,
    title: str,
    rows: Sequence[StageRow],
    outputs: Mapping[str, Mapping[str, Any]],
    config_json: Mapping[str, Any],
) -> str:
    """Writes `<run_dir>/report.md` with its PNGs.

    Args:
      run_dir: the run's report directory (local).
      title: the report's heading.
      rows: the stage rows.
      outputs: node id to {output key: Artifact}.
      config_json: the run's resolved config.

    Returns:
      The path of report.md.
    """
    os.makedirs(run_dir, exist_ok=True)
    lines = [f"# {title}", "", "```", format_table(rows), "```", ""]
    for row in rows:
        lines += [f"## {row.stage} at {row.resolution} px", ""]
        curves = plot_training_curves(
            row.model_uri, os.path.join(run_dir, f"{row.stage}_curves.png")
        )
        if curves:
            lines += [f"![training curves]({os.path.basename(curves)})", ""]
        confusion = _copy_confusion(outputs, row.stage, run_dir)
        if confusion:
            lines += [f"![confusion matrix]({confusion})", ""]
    bias = _bias_section(outputs, run_dir)
    lines += bias
    core.write_json(os.path.join(run_dir, "config.json"), config_json)
    lines += ["The run's resolved config: [config.json](config.json).", ""]
    path = os.path.join(run_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars from TensorBoard event files: tag -> [(step, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor))
                else:
                    number = float(value.simple_value)
                series.setdefault(value.tag, []).append((event.step, number))
    return {tag: sorted(points) for tag, points in series.items()}


def plot_training_curves(model_uri: str, path: str) -> str | None:
    """Loss and accuracy against steps, train and validation.

    Returns:
      The PNG path, or None when the model has no logs.
    """
    logs = os.path.join(model_uri, model_io.LOGS_DIR)
    runs = {
        name: read_scalars(os.path.join(logs, name))
        for name in ("train", "validation")
        if os.path.isdir(os.path.join(logs, name))
    }
    if not any(runs.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, tags in zip(
        axes, (("loss",), ("accuracy", "top1", "precision_at_1")), strict=True
    ):
        for run, series in runs.items():
            for tag in tags:
                if tag in series:
                    steps, values = zip(*series[tag], strict=True)
                    ax.plot(steps, values, marker=".", label=f"{run} {tag}")
        ax.set_xlabel("step")
        ax.set_title(tags[0])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bias_resize(
    table: np.ndarray, resized: np.ndarray, path: str, title: str
) -> str:
    """Head 0 of a bias table before and after resizing, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    vmin = float(min(table[0].min(), resized[0].min()))
    vmax = float(max(table[0].max(), resized[0].max()))
    for ax, data, name in (
        (axes[0], table[0], "before"),
        (axes[1], resized[0], "after"),
    ):
        image = ax.imshow(data, cmap="coolwarm", vmin=vmin, vmax=vmax)
        ax.set_title(f"{name}: {data.shape[0]}x{data.shape[1]} offsets")
        ax.set_xlabel("column offset")
        ax.set_ylabel("row offset")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _copy_confusion(
    outputs: Mapping[str, Mapping[str, Any]], stage: str, run_dir: str
) -> str | None:
    evaluation = outputs[f"Evaluator.{stage}"]["evaluation"]
    found = evaluation_lib.confusion_png(evaluation.uri)
    if found is None:
        return None
    name = f"{stage}_confusion.png"
    tf.io.gfile.copy(found, os.path.join(run_dir, name), overwrite=True)
    return name


def _bias_section(
    outputs: Mapping[str, Mapping[str, Any]], run_dir: str
) -> list[str]:
    """The first S3 bias table of the pretrained weights, before and after
    the resize a finetune at the finetuned resolution applies."""
    source = outputs.get("Trainer.pretrain", {}).get("model")
    target = None
    for stage in ("finetune", "retrain"):
        target = outputs.get(f"Trainer.{stage}", {}).get("model") or target
    if source is None or target is None:
        return []
    import coatnet_tf

    reader = tf.train.load_checkpoint(model_io.weights_path(source.uri))
    names = sorted(
        n
        for n in reader.get_variable_to_shape_map()
        if "relative_position_bias" in n and "OPTIMIZER" not in n
    )
    if not names:
        return []
    table = reader.get_tensor(names[0])
    target_shape = tf.train.load_checkpoint(
        model_io.weights_path(target.uri)
    ).get_variable_to_shape_map()[names[0]]
    src_size = model_io.read_spec(source.uri).image_size
    dst_size = model_io.read_spec(target.uri).image_size
    new_h, new_w = coatnet_tf.grid_size(target_shape)
    resized = coatnet_tf.resize_relative_position_bias(
        tf.constant(table), new_h, new_w
    ).numpy()
    png = plot_bias_resize(
        table,
        resized,
        os.path.join(run_dir, "bias_table_resize.png"),
        f"{names[0].split('/.ATTRIBUTES')[0]}, head 0: "
        f"{src_size} px -> {dst_size} px",
    )
    return [
        "## Relative position bias, before and after resizing",
        "",
        f"![bias table]({os.path.basename(png)})",
        "",
    ]
