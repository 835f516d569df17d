"""Reading an Examples artifact's split for evaluation.

ExampleGen writes `<uri>/Split-<name>/data_tfrecord-*` (GZIP when the name
ends in `.gz`, the TFX convention), tf.Example records with `image/encoded`
and `image/class/label` (an int64 list: one id single-label, several for
multi-label sets such as ImageNet-ReaL), plus `<uri>/labels.txt`. Every
file directly under a split directory is data, as in TFX, except hidden and
`_`-prefixed bookkeeping files.

Images go through `components.preprocessing.preprocess_for_eval`, the same
function the exported SavedModel calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from components import base, model_io, preprocessing

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
SPLIT_PREFIX = "Split-"


def split_names(examples: base.Artifact) -> list[str]:
    """The splits of an Examples artifact (property, else the folders)."""
    names = examples.properties.get("split_names")
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    if names:
        return list(names)
    found = tf.io.gfile.glob(os.path.join(examples.uri, SPLIT_PREFIX + "*"))
    return sorted(os.path.basename(p)[len(SPLIT_PREFIX) :] for p in found)


def split_files(examples: base.Artifact, split: str) -> list[str]:
    """The data files of one split, sorted.

    Raises:
      base.ArtifactError: the split is missing or empty; the error lists
        the splits that exist.
    """
    directory = os.path.join(examples.uri, SPLIT_PREFIX + split)
    files = []
    if tf.io.gfile.isdir(directory):
        files = sorted(
            os.path.join(directory, name)
            for name in tf.io.gfile.listdir(directory)
            if not name.startswith(("_", ".")) and not name.endswith("/")
        )
    if not files:
        raise base.ArtifactError(
            f"Examples at {examples.uri} have no data in split {split!r}; "
            f"splits: {split_names(examples)}."
        )
    return files


def read_labels(examples: base.Artifact) -> list[str] | None:
    """The artifact's class names, or None when it has no labels.txt."""
    path = os.path.join(examples.uri, model_io.LABELS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    return model_io.read_labels(path)


def label_mapping(
    data_labels: Sequence[str] | None, model_labels: Sequence[str]
) -> list[int] | None:
    """Maps the data's label ids onto the model's, by class name.

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
            f"{len(missing)} classes of the evaluation data are not in the "
            f"model's labels, e.g. {missing[:5]}; evaluate on data with the "
            "model's label space."
        )
    return [index[n] for n in data_labels]


def records(files: Sequence[str]) -> tf.data.Dataset:
    """Serialized records of `files`, GZIP-decoded where named `.gz`."""
    groups = {
        "GZIP": [f for f in files if f.endswith(".gz")],
        "": [f for f in files if not f.endswith(".gz")],
    }
    datasets = [
        tf.data.TFRecordDataset(names, compression_type=kind)
        for kind, names in groups.items()
        if names
    ]
    dataset = datasets[0]
    for other in datasets[1:]:
        dataset = dataset.concatenate(other)
    return dataset


def eval_dataset(
    files: Sequence[str],
    image_size: int,
    batch_size: int,
    mapping: Sequence[int] | None = None,
    max_examples: int = 0,
) -> tf.data.Dataset:
    """Batches of (preprocessed images, padded labels) for evaluation.

    Args:
      files: TFRecord files of tf.Example.
      image_size: the model's resolution.
      batch_size: images per batch (the last batch may be smaller).
      mapping: optional data id -> model id table (see `label_mapping`).
      max_examples: stop after this many records (0: all).

    Returns:
      A dataset of (float32 `[B, S, S, 3]`, int64 `[B, L]` with -1 as
      padding, L the most labels of any record in the batch).
    """
    features = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.VarLenFeature(tf.int64),
    }
    table = None if mapping is None else tf.constant(mapping, tf.int64)

    def parse(serialized):
        parsed = tf.io.parse_single_example(serialized, features)
        labels = parsed[LABEL_KEY].values
        if table is not None:
            labels = tf.gather(table, labels)
        image = preprocessing.preprocess_for_eval(parsed[IMAGE_KEY], image_size)
        return image, labels

    dataset = records(files)
    if max_examples:
        dataset = dataset.take(max_examples)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.padded_batch(
        batch_size,
        padded_shapes=([image_size, image_size, 3], [None]),
        padding_values=(0.0, tf.constant(-1, tf.int64)),
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def encoded_images(files: Sequence[str], count: int) -> list[bytes]:
    """The first `count` encoded images of `files` (for warmup requests)."""
    out = []
    for serialized in records(files).take(count):
        example = tf.train.Example.FromString(serialized.numpy())
        out.append(example.features.feature[IMAGE_KEY].bytes_list.value[0])
    return out
