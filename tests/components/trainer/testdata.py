"""Small generated Examples artifacts in ExampleGen's output format.

Images are JPEG-encoded colour fields with noise, in varied sizes and aspect
ratios (so crops and resizes have work to do); a class is a colour, which a
tiny model learns in a few dozen steps at 32 px. Multi-label images hold
one vertical band per label. Records follow ExampleGen's
contract: `image/encoded`, `image/format`, `image/height`, `image/width`,
`image/class/label` (sorted), optional `image/class/score`,
`image/source_id`; with `labels.txt`, `metadata.json` and `_artifact.json`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from artifacts import core
from artifacts import examples as examples_lib
from components import base

PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
    "cyan": (30, 210, 210),
    "magenta": (210, 30, 210),
}
# The default colour classes; the other two make a new label space.
COLORS = ("red", "green", "blue", "yellow")


def _image(rng, label_names, size) -> np.ndarray:
    h, w = size
    noise = rng.normal(0, 18, size=(h, w, 3))
    image = np.zeros((h, w, 3))
    # Multi-label images are split into vertical bands, one per colour.
    bands = np.array_split(np.arange(w), len(label_names))
    for name, cols in zip(label_names, bands):
        image[:, cols] = PALETTE[name]
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_examples(
    root: str,
    classes: tuple[str, ...] | None = None,
    splits: dict[str, int] | None = None,
    multi_label: bool = False,
    with_scores: bool = False,
    compression: str = "NONE",
    num_shards: int = 2,
    seed: int = 0,
    block_repeat: int = 0,
) -> base.Artifact:
    """Writes an Examples artifact and returns it.

    Args:
      root: the artifact's directory.
      classes: class names from `PALETTE` (default: `COLORS`).
      splits: examples per split, e.g. {"train": 64, "validation": 16}.
      multi_label: images hold two colour bands, labelled with both.
      with_scores: write `image/class/score` (multi-label only).
      compression: "NONE" or "GZIP" (shards end in .gz).
      num_shards: shards per split.
      seed: the generator's seed.
      block_repeat: when > 0, every run of this many examples is written
        twice in a row, so that, read in order from one shard, each batch
        of 2 * block_repeat holds two identical halves.

    Returns:
      The Examples artifact.
    """
    classes = tuple(classes or COLORS)
    splits = splits or {"train": 64, "validation": 16}
    rng = np.random.default_rng(seed)
    if block_repeat and num_shards != 1:
        raise ValueError("block_repeat needs num_shards=1 to keep the order.")
    written = {}
    for split, count in splits.items():
        records = []
        for n in range(count):
            if multi_label:
                labels = sorted(
                    rng.choice(len(classes), size=2, replace=False).tolist()
                )
            else:
                labels = [n % len(classes)]
            size = (int(rng.integers(36, 60)), int(rng.integers(36, 60)))
            pixels = _image(rng, [classes[i] for i in labels], size)
            records.append(
                examples_lib.make_example(
                    tf.io.encode_jpeg(pixels, quality=90).numpy(),
                    size[0],
                    size[1],
                    labels,
                    [1.0, 0.5][: len(labels)] if with_scores else None,
                    f"{split}/{n:06d}",
                )
            )
        if block_repeat > 0:
            blocks = [
                records[i : i + block_repeat]
                for i in range(0, len(records), block_repeat)
            ]
            records = [r for block in blocks for r in block + block]
        written[split] = examples_lib.write_split(
            root, split, records, num_shards, compression
        )["num_examples"]
    examples_lib.write_labels(root, classes)
    core.write_json(
        os.path.join(root, "metadata.json"),
        {"label_map": list(classes), "counts": written},
    )
    artifact = base.Artifact(
        base.EXAMPLES,
        root,
        {
            "num_classes": len(classes),
            "multi_label": multi_label,
            "split_names": list(splits),
            "num_examples": written,
            "compression": compression,
        },
    )
    artifact.write()
    return artifact
