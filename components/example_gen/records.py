"""The records ExampleGen writes and the entries flowing to them.

Output contract (read by the Trainer and the pipeline): tf.Example with

- `image/encoded`: RGB JPEG bytes; `image/format`: b"jpeg";
- `image/height`, `image/width`: int64;
- `image/class/label`: int64 list, one entry single-label, several
  multi-label (sorted ascending);
- `image/class/score`: float list aligned with the labels (only when the
  source gives scores);
- `image/source_id`: bytes, the stable id of the source image.

Between the Beam stages, entries are plain dicts and tuples (cheap, and
encodable by Beam's default coder on every runner):

- an *item* is an image to read and convert: `split`, `source` (where it
  is: a path, `tar:member`, ...), `source_id`, `labels`, `scores`, and
  either `path` (read in the decode step) or inline `data` bytes;
- a *reject* is an entry that will not be written: `split`, `source`,
  `reason`, `error` and the `digest` of its bytes when they were read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
LABEL = "image/class/label"
SCORE = "image/class/score"
SOURCE_ID = "image/source_id"

# Entry kinds emitted by the discovery step.
ITEM = "item"
REJECT = "reject"

# Rejects found before decoding (the image reasons are in images.py).
UNSAFE_PATH = "unsafe_path"
NOT_A_FILE = "not_a_file"
EMPTY_CLASS = "empty_class"
UNKNOWN_LABEL = "unknown_label"
NO_LABELS = "no_labels"
BAD_MANIFEST_ROW = "bad_manifest_row"
MISSING_FILE = "missing_file"
BAD_ARCHIVE = "bad_archive"
DUPLICATE = "duplicate"
# The unread rest of a damaged archive or record file (tar_check.py).
DAMAGED_ARCHIVE = "damaged_archive"
UNREADABLE_FILE = "unreadable_file"
UNSUPPORTED_SCHEME = "unsupported_scheme"
OUTSIDE_IMAGE_ROOT = "outside_image_root"
BAD_SCORE = "bad_score"
BAD_RECORD = "bad_record"


def make_item(
    split: str,
    source: str,
    source_id: str,
    labels: Sequence[int],
    scores: Sequence[float] | None = None,
    path: str | None = None,
    data: bytes | None = None,
) -> dict[str, Any]:
    """An image to convert and write (see the module docstring).

    Labels are made unique (a repeated label keeps its first score) and
    sorted ascending, scores following them, so that the same annotation
    always gives the same record.
    """
    first: dict[int, float | None] = {}
    for k, label in enumerate(labels):
        first.setdefault(
            int(label), None if scores is None else float(scores[k])
        )
    labels = sorted(first)
    score_list = None if scores is None else [first[v] for v in labels]
    return {
        "split": split,
        "source": source,
        "source_id": source_id,
        "labels": tuple(labels),
        "scores": None if score_list is None else tuple(score_list),
        "path": path,
        "data": data,
    }


def make_reject(
    split: str,
    source: str,
    reason: str,
    error: str,
    digest: str = "",
) -> dict[str, Any]:
    """An entry for the dead-letter output.

    Args:
      split: the split it was meant for.
      source: where it is (path, `tar:member`, `manifest@offset`, ...).
      reason: a short machine-readable reason (the constants here and in
        images.py).
      error: a human-readable explanation.
      digest: sha256 hex of the bytes, when they were read.

    Returns:
      The reject dict.
    """
    return {
        "split": split,
        "source": source,
        "reason": reason,
        "error": error,
        "digest": digest,
    }


def stable_hash(*parts: Any) -> int:
    """A 64-bit hash that is the same in every process and on every run.

    Python's `hash` of a str is salted per process, so it cannot place
    records in shards; sha256 of the joined parts can.
    """
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def unit_interval(*parts: Any) -> float:
    """`stable_hash` mapped to [0, 1)."""
    return stable_hash(*parts) / 2.0**64


def digest(data: bytes) -> str:
    """sha256 hex of the bytes: the identity used for deduplication."""
    return hashlib.sha256(data).hexdigest()


def make_example(
    jpeg: bytes,
    height: int,
    width: int,
    labels: Sequence[int],
    scores: Sequence[float] | None,
    source_id: str,
) -> bytes:
    """Serializes one record of the output contract.

    Args:
      jpeg: RGB JPEG bytes.
      height: image rows.
      width: image columns.
      labels: class indices.
      scores: per-label scores aligned with `labels`, or None.
      source_id: the stable id of the source image.

    Returns:
      The serialized tf.Example (deterministic serialization).
    """

    def _bytes(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    def _ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    feature = {
        IMAGE_ENCODED: _bytes([jpeg]),
        IMAGE_FORMAT: _bytes([b"jpeg"]),
        IMAGE_HEIGHT: _ints([height]),
        IMAGE_WIDTH: _ints([width]),
        LABEL: _ints(list(labels)),
        SOURCE_ID: _bytes([source_id.encode("utf-8")]),
    }
    if scores is not None:
        feature[SCORE] = tf.train.Feature(
            float_list=tf.train.FloatList(value=list(scores))
        )
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Map fields serialize in an unspecified order unless asked otherwise;
    # byte-identical output needs the deterministic form.
    return example.SerializeToString(deterministic=True)


def feature_spec(multi_label: bool, with_scores: bool) -> dict[str, Any]:
    """The parsing spec of the records, for readers and tests.

    Args:
      multi_label: labels as a VarLen list (else one FixedLen int64).
      with_scores: include `image/class/score` (VarLen float).

    Returns:
      A dict for `tf.io.parse_single_example`.
    """
    spec = {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
        LABEL: (
            tf.io.VarLenFeature(tf.int64)
            if multi_label
            else tf.io.FixedLenFeature([], tf.int64)
        ),
    }
    if with_scores:
        spec[SCORE] = tf.io.VarLenFeature(tf.float32)
    return spec
