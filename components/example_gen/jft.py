"""`jft` source: a multi-label manifest plus a label vocabulary.

The JFT record format is not public; this is the closest public shape
(big_vision's multi-label `labels`, Model Garden's `is_multilabel`). The
manifest is JSONL or CSV (a glob of several files is fine):

    {"image": "imgs/a.jpg", "labels": ["cat", "dog"], "scores": [0.9, 0.7]}
    {"image": "gs://bucket/b.jpg", "labels": [3], "id": "b-0001"}

    image,labels,scores,id
    imgs/a.jpg,cat|dog,0.9|0.7,

- `image` (or `path`): a path or URI; relative paths are relative to
  `--image_root`, by default the manifest's folder. Images must lie under
  that root (absolute paths elsewhere, `..` climbing out and other
  buckets are rejected) unless `--allow_outside_image_root`.
- `labels`: names from `--labels_vocab`, or integer ids (JSON ints, or
  digit strings that are not names). CSV separates them with `|`.
- `scores`: optional, one per label (e.g. JFT's noisy-label confidences).
- `id`: optional source id (default: the image path as written).

Unknown labels, rows without labels, scores that do not match the labels
or are not finite (NaN or infinite scores would turn a training loss to
NaN), URIs of unsupported schemes and unparsable rows (not UTF-8, JSON
nested too deep, a CSV field too long, ...) are rejected one row at a
time with their reason. `--input` is the
train manifest, `--validation_input` the validation one.

Manifests are cut into 64 MiB byte ranges, one unit each, so a manifest
of hundreds of millions of rows is read in parallel; a row belongs to the
range its first byte is in. CSV fields must not hold newlines.
"""

from __future__ import annotations

import csv
import json
import math
import posixpath
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from components.example_gen import config as config_lib
from components.example_gen import records, sources

RANGE_BYTES = 64 << 20
# URI schemes images may have (tf.io.gfile's file systems); anything else
# (http://, s3:// without a plugin, ...) is rejected per row.
SUPPORTED_SCHEMES = ("gs", "hdfs")
LABEL_SEPARATOR = "|"
_CSV_SUFFIXES = (".csv", ".tsv")


def _is_csv(path: str) -> bool:
    return path.lower().endswith(_CSV_SUFFIXES)


class JftSource(sources.Source):
    """Multi-label manifests (see the module docstring)."""

    def plan(self) -> sources.Plan:
        config = self.config
        vocab_lines = sources.read_text_lines(
            config.labels_vocab, "labels_vocab"
        )
        names = [sources.split_name_line(line)[0] for line in vocab_lines]
        if len(set(names)) != len(names):
            raise ValueError(
                f"--labels_vocab={config.labels_vocab}: repeats a label name."
            )
        descriptions = dict(sources.split_name_line(x) for x in vocab_lines)
        descriptions.update(
            sources.read_descriptions(
                config.class_descriptions, "class_descriptions"
            )
        )
        # Pickled into the workers with the source: name -> index.
        self.vocab = {name: i for i, name in enumerate(names)}
        manifests = [(config_lib.TRAIN, self.resolved.input.pattern, "input")]
        if config.validation_input:
            manifests.append(
                (
                    config_lib.VALIDATION,
                    self.resolved.validation_input.pattern,
                    "validation_input",
                )
            )
        units, inputs = [], {"labels_vocab": config.labels_vocab}
        for split, pattern, flag in manifests:
            inputs[flag] = pattern
            for path in sources.require_glob(pattern, flag):
                units += self._ranges(split, path, flag)
        return sources.Plan(
            classes=sources.make_classes(names, descriptions),
            splits=tuple(s for s, _, _ in manifests),
            units=units,
            multi_label=True,
            with_scores=True,
            inputs=inputs,
        )

    @staticmethod
    def _ranges(split: str, path: str, flag: str) -> list[dict[str, Any]]:
        size = tf.io.gfile.stat(path).length
        if size == 0:
            raise ValueError(f"--{flag}: the manifest {path} is empty.")
        header = None
        if _is_csv(path):
            with tf.io.gfile.GFile(path, "r") as f:
                header = next(csv.reader([f.readline()]), [])
            header = [h.strip() for h in header]
            if "image" not in header and "path" not in header:
                raise ValueError(
                    f"--{flag}={path}: the CSV header {header} has no "
                    "'image' column."
                )
        return [
            {
                "id": f"{path}@{start}",
                "split": split,
                "path": path,
                "start": start,
                "end": min(start + RANGE_BYTES, size),
                "header": header,
            }
            for start in range(0, size, RANGE_BYTES)
        ]

    def read(self, unit: dict[str, Any]) -> Iterator[sources.Entry]:
        path, start, end = unit["path"], unit["start"], unit["end"]
        with tf.io.gfile.GFile(path, "rb") as f:
            if start > 0:
                # The line holding byte start-1 belongs to the range before.
                f.seek(start - 1)
                f.readline()
            elif unit["header"] is not None:
                f.readline()
            while True:
                offset = f.tell()
                if offset >= end:
                    break
                line = f.readline()
                if not line:
                    break
                if line.strip():
                    yield self._parse(unit, line, f"{path}@{offset}")

    def _parse(self, unit: dict[str, Any], line: bytes, where: str):
        """One manifest row -> an item or a reject; never raises.

        Anything wrong with one row (bytes that are not UTF-8, JSON nested
        past Python's recursion limit, a CSV field over the csv module's
        limit, odd types) rejects that row alone.
        """
        split = unit["split"]
        try:
            text = line.decode("utf-8").strip()
            row = self._row(unit, text)
            image = row.get("image") or row.get("path")
            if not image or not isinstance(image, str):
                raise ValueError("no 'image' field")
            labels = row.get("labels")
            if labels is None:
                labels = []
            elif not isinstance(labels, list):
                labels = [labels]
            scores = row.get("scores")
            if scores is not None:
                if not isinstance(scores, list):
                    scores = [scores]
                if any(isinstance(x, (bool, list, dict)) for x in scores):
                    raise ValueError(f"scores must be numbers: {scores}")
                scores = [float(x) for x in scores]
                if len(scores) != len(labels):
                    raise ValueError(
                        f"{len(scores)} scores for {len(labels)} labels"
                    )
            source_id = str(row.get("id") or image)
            # Lone surrogates (JSON's "\udce9") cannot be written.
            image.encode("utf-8")
            source_id.encode("utf-8")
        except Exception as e:  # Any failure is this row's alone.
            return records.REJECT, records.make_reject(
                split,
                where,
                records.BAD_MANIFEST_ROW,
                f"{type(e).__name__}: {str(e)[:500]}",
            )
        if scores is not None and not all(map(math.isfinite, scores)):
            return records.REJECT, records.make_reject(
                split,
                where,
                records.BAD_SCORE,
                f"scores must be finite: {scores}",
            )
        image, problem = self._locate(unit, image)
        if problem:
            return records.REJECT, records.make_reject(
                split, f"{where}: {image}", problem[0], problem[1]
            )
        if not labels:
            return records.REJECT, records.make_reject(
                split, image, records.NO_LABELS, "the row has no labels"
            )
        indices, unknown = {}, []
        for k, label in enumerate(labels):
            index = self._index(label)
            if index is None:
                unknown.append(label)
            elif index not in indices:
                # A repeated label keeps its first score.
                indices[index] = scores[k] if scores is not None else None
        if unknown:
            return records.REJECT, records.make_reject(
                split,
                image,
                records.UNKNOWN_LABEL,
                f"not in --labels_vocab: {unknown}"[:500],
            )
        return records.ITEM, records.make_item(
            split=split,
            source=image,
            source_id=source_id,
            labels=list(indices),
            scores=None if scores is None else list(indices.values()),
            path=image,
        )

    def _locate(
        self, unit: dict[str, Any], image: str
    ) -> tuple[str, tuple[str, str] | None]:
        """The image's full path, and (reason, error) if it may not be read.

        Relative paths are taken from the image root (`--image_root`, else
        the manifest's folder). Unless `--allow_outside_image_root`, the
        normalized path must lie under that root: an absolute path
        elsewhere, a `..` climbing out and another bucket are rejected
        before anything is opened.
        """
        root = self.config.image_root or posixpath.dirname(unit["path"])
        scheme = image.partition("://")[0] if "://" in image else ""
        if scheme and scheme.lower() not in SUPPORTED_SCHEMES:
            return image, (
                records.UNSUPPORTED_SCHEME,
                f"{scheme}:// is not read here; supported: local paths and "
                f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)}",
            )
        if not scheme and not posixpath.isabs(image):
            image = posixpath.join(root, image)
        image = _normalize(image)
        if self.config.allow_outside_image_root:
            return image, None
        top = _normalize(root).rstrip("/") + "/"
        if not image.startswith(top):
            return image, (
                records.OUTSIDE_IMAGE_ROOT,
                f"not under the image root {top} (see --image_root, "
                "--allow_outside_image_root)",
            )
        return image, None

    @staticmethod
    def _row(unit: dict[str, Any], text: str) -> dict[str, Any]:
        if unit["header"] is None:
            row = json.loads(text)
            if not isinstance(row, dict):
                raise ValueError("a JSONL row must be an object")
            return row
        values = next(csv.reader([text]))
        row = dict(zip(unit["header"], (v.strip() for v in values)))
        for key in ("labels", "scores"):
            if row.get(key):
                row[key] = row[key].split(LABEL_SEPARATOR)
            else:
                row.pop(key, None)
        return row

    def _index(self, label: Any) -> int | None:
        """A label name or id -> its class index; None if unknown."""
        if isinstance(label, bool):
            return None
        if isinstance(label, str):
            if label in self.vocab:
                return self.vocab[label]
            label = label.strip()
            # ASCII digits only: str.isdigit() is true of "²", which int()
            # refuses.
            if not (label.isascii() and label.isdigit()):
                return None
            label = int(label)
        if isinstance(label, int) and 0 <= label < len(self.vocab):
            return label
        return None


def _normalize(path: str) -> str:
    """Collapses `.` and `..` (after a URI's bucket for gs:// paths)."""
    if "://" in path:
        scheme, _, rest = path.partition("://")
        bucket, _, key = rest.partition("/")
        return f"{scheme}://{bucket}/" + posixpath.normpath("/" + key)[1:]
    return posixpath.normpath(path)
