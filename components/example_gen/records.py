"""The entries flowing through ExampleGen's Beam stages to its records.

The records themselves (feature keys, serialization, parse spec, shard
layout) are the Examples artifact's, owned by `artifacts.examples`; their
names are re-exported here for the sources.

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

from artifacts.examples import (  # noqa: F401 (the sources' names)
    IMAGE_ENCODED,
    IMAGE_FORMAT,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    LABEL,
    SCORE,
    SOURCE_ID,
    make_example,
)

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
