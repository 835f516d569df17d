"""The Examples artifact: TFRecord shards of tf.Example, split by split.

Layout under an Examples artifact's URI (ExampleGen writes it; the Trainer,
the Evaluator, the Exporter's warmup and the benches read it):

  Split-<name>/data_tfrecord-00000-of-00064[.gz]   the records
  labels.txt                                       class names, index order

A split's data is every file directly under its directory except hidden and
`_`-prefixed bookkeeping files, as in TFX. Shards are GZIP-compressed when
the artifact's `compression` property says so, or, without the property,
when their names end in `.gz` (the TFX convention).

Each record is a tf.Example with

- `image/encoded`: RGB JPEG bytes; `image/format`: b"jpeg";
- `image/height`, `image/width`: int64;
- `image/class/label`: int64 list, one entry single-label, several
  multi-label (sorted ascending);
- `image/class/score`: float list aligned with the labels (only when the
  source gives scores);
- `image/source_id`: bytes, the stable id of the source image.

Every reader parses with `READ_SPEC` (through `parse`); the serving
signatures take Examples holding `image/encoded` only (`image_examples`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from artifacts import core
from artifacts import model as model_lib

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
LABEL = "image/class/label"
SCORE = "image/class/score"
SOURCE_ID = "image/source_id"

SPLIT_PREFIX = "Split-"
SHARD_PREFIX = "data_tfrecord"
LABELS_FILE = model_lib.LABELS_FILE

# The `compression` property's values (ExampleGen's --compression) and the
# tf.data compression type each stands for.
GZIP = "GZIP"
NONE = "NONE"
COMPRESSIONS = (GZIP, NONE)
GZIP_SUFFIX = ".gz"

# What every reader parses: the image and its labels and scores (the other
# fields describe the record for people and tools).
READ_SPEC = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.VarLenFeature(tf.int64),
    SCORE: tf.io.VarLenFeature(tf.float32),
}
# What the serving signatures parse out of the Examples a client sends.
IMAGE_SPEC = {IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}


def feature_spec(multi_label: bool, with_scores: bool) -> dict[str, Any]:
    """The full parsing spec of the records, every field typed.

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


def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one record into image bytes, labels and scores.

    Returns:
      {"image": string scalar, "labels": int64 [n], "scores": float32 [m]},
      m being n or 0.
    """
    parsed = tf.io.parse_single_example(serialized, READ_SPEC)
    return {
        "image": parsed[IMAGE_ENCODED],
        "labels": tf.sparse.to_dense(parsed[LABEL]),
        "scores": tf.sparse.to_dense(parsed[SCORE]),
    }


def make_example(
    jpeg: bytes,
    height: int,
    width: int,
    labels: Sequence[int],
    scores: Sequence[float] | None,
    source_id: str,
) -> bytes:
    """Serializes one record.

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


def jpeg_example(
    jpeg: bytes,
    labels: Sequence[int],
    source_id: str,
    scores: Sequence[float] | None = None,
) -> bytes:
    """`make_example` with the height and width read from the JPEG header."""
    height, width, _ = tf.io.extract_jpeg_shape(jpeg).numpy().tolist()
    return make_example(jpeg, height, width, labels, scores, source_id)


def image_examples(encoded: Iterable[bytes]) -> list[bytes]:
    """Serialized tf.Examples holding `image/encoded` only (Classify input)."""
    return [
        tf.train.Example(
            features=tf.train.Features(feature={IMAGE_ENCODED: _bytes([b])})
        ).SerializeToString()
        for b in encoded
    ]


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


# Layout.


def split_dir(uri: str, split: str) -> str:
    """`<uri>/Split-<split>`."""
    return os.path.join(uri, SPLIT_PREFIX + split)


def shard_path(
    uri: str, split: str, shard: int, num_shards: int, compression: str
) -> str:
    """`<uri>/Split-<split>/data_tfrecord-<shard>-of-<n>[.gz]`."""
    suffix = GZIP_SUFFIX if compression == GZIP else ""
    return os.path.join(
        split_dir(uri, split),
        f"{SHARD_PREFIX}-{shard:05d}-of-{num_shards:05d}{suffix}",
    )


def compression_type(path: str, compression: str | None) -> str:
    """The tf.data compression type of one shard.

    Args:
      path: the shard.
      compression: the artifact's `compression` (GZIP, NONE or ""), or None
        when unknown: then the `.gz` suffix decides.

    Returns:
      "GZIP" or "".
    """
    if compression is not None:
        return GZIP if str(compression).upper() == GZIP else ""
    return GZIP if path.endswith(GZIP_SUFFIX) else ""


def split_names(examples: core.Artifact) -> list[str]:
    """The splits of an Examples artifact (property, else the folders)."""
    names = examples.properties.get("split_names")
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    if names:
        return list(names)
    found = tf.io.gfile.glob(os.path.join(examples.uri, SPLIT_PREFIX + "*"))
    return sorted(os.path.basename(p)[len(SPLIT_PREFIX) :] for p in found)


def list_shards(uri: str, split: str) -> list[str]:
    """The data files of one split, sorted (empty when there are none)."""
    directory = split_dir(uri, split)
    if not tf.io.gfile.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, name)
        for name in tf.io.gfile.listdir(directory)
        if not name.startswith(("_", ".")) and not name.endswith("/")
    )


def split_files(examples: core.Artifact, split: str) -> list[str]:
    """The data files of one split, sorted.

    Raises:
      core.ArtifactError: the split is missing or empty; the error lists
        the splits that exist.
    """
    files = list_shards(examples.uri, split)
    if not files:
        raise core.ArtifactError(
            f"Examples at {examples.uri} have no data in split {split!r} "
            f"(nothing under {split_dir(examples.uri, split)}); splits: "
            f"{split_names(examples)}."
        )
    return files


def compression_of(examples: core.Artifact) -> str | None:
    """The artifact's `compression` property, None when it is unset."""
    value = examples.properties.get("compression")
    return None if value is None else str(value)


def records(
    files: Sequence[str], compression: str | None = None
) -> tf.data.Dataset:
    """Serialized records of `files` in order, each file decompressed as
    `compression_type` says."""
    types = [compression_type(f, compression) for f in files]
    return tf.data.Dataset.from_tensor_slices((list(files), types)).flat_map(
        lambda path, kind: tf.data.TFRecordDataset(path, compression_type=kind)
    )


def encoded_images(
    files: Sequence[str], count: int, compression: str | None = None
) -> list[bytes]:
    """The first `count` encoded images of `files` (for warmup requests)."""
    out = []
    for serialized in records(files, compression).take(count):
        example = tf.train.Example.FromString(serialized.numpy())
        out.append(example.features.feature[IMAGE_ENCODED].bytes_list.value[0])
    return out


def read_labels(examples: core.Artifact) -> list[str] | None:
    """The artifact's class names, or None when it has no labels.txt."""
    path = os.path.join(examples.uri, LABELS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    return model_lib.read_labels(path)


def label_mapping(
    data_labels: Sequence[str] | None, model_labels: Sequence[str]
) -> list[int] | None:
    """Maps the data's label ids onto a model's, by class name.

    Args:
      data_labels: the Examples' class names (None: ids already agree).
      model_labels: the model's class names.

    Returns:
      None when the ids agree; else `mapping[data_id] = model_id`.

    Raises:
      ValueError: some data classes are unknown to the model.
    """
    if data_labels is None or list(data_labels) == list(model_labels):
        return None
    index = {name: i for i, name in enumerate(model_labels)}
    missing = [n for n in data_labels if n not in index]
    if missing:
        raise ValueError(
            f"{len(missing)} classes of the examples are not in the model's "
            f"labels, e.g. {missing[:5]}; use examples of the model's label "
            "space."
        )
    return [index[n] for n in data_labels]


@dataclasses.dataclass(frozen=True)
class ExamplesInfo:
    """What a training reader needs to know about an Examples artifact.

    Attributes:
      uri: the artifact's root.
      num_classes: the label space's size.
      multi_label: records may hold several labels.
      labels: class names in index order.
      num_examples: examples per split name (may be empty when unknown).
      compression: the artifact's `compression` property: "GZIP", "" for
        none, None when unset (each file's suffix decides).
    """

    uri: str
    num_classes: int
    multi_label: bool
    labels: tuple[str, ...]
    num_examples: dict[str, int]
    compression: str | None = None

    def split_files(self, split: str) -> list[str]:
        """The TFRecord shards of a split, sorted.

        Raises:
          core.ArtifactError: the split has no files.
        """
        files = list_shards(self.uri, split)
        if not files:
            raise core.ArtifactError(
                f"No TFRecord files under {split_dir(self.uri, split)}: the "
                f"Examples artifact has no split {split!r}."
            )
        return files


def read_info(artifact: core.Artifact) -> ExamplesInfo:
    """Reads the label map and split sizes of an Examples artifact.

    Args:
      artifact: an Examples artifact.

    Returns:
      Its `ExamplesInfo`.

    Raises:
      core.ArtifactError: labels.txt is missing or disagrees with the
        `num_classes` property.
    """
    props = artifact.properties
    labels = model_lib.read_labels(os.path.join(artifact.uri, LABELS_FILE))
    num_classes = int(props.get("num_classes") or len(labels))
    if len(labels) != num_classes:
        raise core.ArtifactError(
            f"{artifact.uri}: labels.txt has {len(labels)} names but the "
            f"artifact says num_classes={num_classes}."
        )
    compression = compression_of(artifact)
    if compression is not None:
        compression = compression_type("", compression)
    return ExamplesInfo(
        uri=artifact.uri,
        num_classes=num_classes,
        multi_label=bool(props.get("multi_label", False)),
        labels=tuple(labels),
        num_examples={
            k: int(v) for k, v in (props.get("num_examples") or {}).items()
        },
        compression=compression,
    )


def write_split(
    uri: str,
    split: str,
    serialized: Iterable[bytes],
    num_shards: int,
    compression: str = NONE,
) -> dict[str, Any]:
    """Deals serialized records round-robin into a split's shards.

    For small artifacts written in one process (demo data, tests, benches);
    ExampleGen writes its shards in Beam, each atomically, at the same
    paths.

    Args:
      uri: the artifact root.
      split: the split name.
      serialized: the records.
      num_shards: files to write.
      compression: GZIP or NONE.

    Returns:
      {"num_examples": records written, "files": the shard paths}.
    """
    tf.io.gfile.makedirs(split_dir(uri, split))
    paths = [
        shard_path(uri, split, i, num_shards, compression)
        for i in range(num_shards)
    ]
    options = tf.io.TFRecordOptions(
        compression_type=compression_type("", compression)
    )
    writers = [tf.io.TFRecordWriter(p, options) for p in paths]
    count = 0
    try:
        for count, record in enumerate(serialized, start=1):
            writers[(count - 1) % num_shards].write(record)
    finally:
        for writer in writers:
            writer.close()
    return {"num_examples": count, "files": paths}


def write_labels(uri: str, labels: Sequence[str]) -> None:
    """Writes the artifact's labels.txt."""
    model_lib.write_labels(os.path.join(uri, LABELS_FILE), labels)


def properties(
    split_counts: Mapping[str, int],
    num_classes: int,
    multi_label: bool,
    compression: str = NONE,
) -> dict[str, Any]:
    """The properties readers use, as ExampleGen records them."""
    return {
        "split_names": list(split_counts),
        "num_classes": num_classes,
        "multi_label": multi_label,
        "compression": compression,
        "num_examples": dict(split_counts),
    }
