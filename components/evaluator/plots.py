"""The Evaluator's PNG plots: confusion matrix and reliability diagram.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot
global state, no display), then written through `tf.io.gfile` so gs://
artifact URIs work.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.evaluator import metrics

# Beyond this many classes a full matrix is unreadable: plot the classes
# involved in the most errors instead.
MAX_CONFUSION_CLASSES = 30


def confusion_classes(
    counts: Mapping[tuple[int, int], int],
    num_classes: int,
    max_classes: int = MAX_CONFUSION_CLASSES,
) -> list[int]:
    """The class ids a confusion plot shows.

    Args:
      counts: sparse (true, predicted) -> count.
      num_classes: C.
      max_classes: the most classes to show.

    Returns:
      All classes when C <= max_classes; else the classes with the most
      errors (as true or predicted class), ties toward lower ids, sorted.
    """
    if num_classes <= max_classes:
        return list(range(num_classes))
    errors = np.zeros(num_classes)
    for (t, p), c in counts.items():
        if t != p:
            errors[t] += c
            errors[p] += c
    chosen = np.argsort(-errors, kind="stable")[:max_classes]
    return sorted(int(c) for c in chosen)


def confusion_matrix_png(
    counts: Mapping[tuple[int, int], int],
    labels: Sequence[str],
    title: str,
) -> bytes:
    """Draws a row-normalized confusion matrix.

    Args:
      counts: sparse (true, predicted) -> count.
      labels: class names in id order.
      title: the figure title.

    Returns:
      PNG bytes.
    """
    shown = confusion_classes(counts, len(labels))
    position = {c: i for i, c in enumerate(shown)}
    matrix = np.zeros((len(shown), len(shown)))
    for (t, p), c in counts.items():
        if t in position and p in position:
            matrix[position[t], position[p]] += c
    rows = matrix.sum(axis=1, keepdims=True)
    normalized = matrix / np.maximum(rows, 1)
    side = min(4 + 0.3 * len(shown), 16)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    image = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    names = [_short(labels[c]) for c in shown]
    ax.set_xticks(range(len(shown)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(shown)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(shown) < len(labels):
        title += f" ({len(shown)} most-confused of {len(labels)} classes)"
    ax.set_title(title, fontsize=9)
    if len(shown) <= 12:
        for i in range(len(shown)):
            for j in range(len(shown)):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center")
    return _png(fig)


def reliability_png(cal: metrics.Calibration, title: str) -> bytes:
    """Draws accuracy against confidence per bin, with the diagonal.

    Args:
      cal: the binned calibration.
      title: the figure title (the ECE is appended).

    Returns:
      PNG bytes.
    """
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    width = np.diff(cal.edges)
    left = cal.edges[:-1]
    filled = cal.count > 0
    ax.bar(
        left[filled],
        cal.accuracy[filled],
        width=width[filled],
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    ax.bar(
        left[filled],
        (cal.confidence - cal.accuracy)[filled],
        bottom=cal.accuracy[filled],
        width=width[filled],
        align="edge",
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {cal.ece:.4f})", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def write_png(path: str, data: bytes) -> None:
    """Writes PNG bytes to a local or gs:// path."""
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
