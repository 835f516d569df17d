"""The Evaluator's reading of an Examples artifact's split.

The layout, listing, compression and parse spec are the Examples
artifact's (`artifacts.examples`); this module adds what only evaluation
needs: mapping the data's label ids onto the model's by class name, and
batches of preprocessed images with padded label lists. Images go through
`components.preprocessing.preprocess_for_eval`, the same function the
exported SavedModel calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from artifacts import examples as examples_lib
from components import preprocessing


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


def eval_dataset(
    files: Sequence[str],
    image_size: int,
    batch_size: int,
    mapping: Sequence[int] | None = None,
    max_examples: int = 0,
    compression: str | None = None,
) -> tf.data.Dataset:
    """Batches of (preprocessed images, padded labels) for evaluation.

    Args:
      files: TFRecord files of tf.Example.
      image_size: the model's resolution.
      batch_size: images per batch (the last batch may be smaller).
      mapping: optional data id -> model id table (see `label_mapping`).
      max_examples: stop after this many records (0: all).
      compression: the artifact's `compression` property (None: each
        file's suffix decides).

    Returns:
      A dataset of (float32 `[B, S, S, 3]`, int64 `[B, L]` with -1 as
      padding, L the most labels of any record in the batch).
    """
    table = None if mapping is None else tf.constant(mapping, tf.int64)

    def parse(serialized):
        parsed = examples_lib.parse(serialized)
        labels = parsed["labels"]
        if table is not None:
            labels = tf.gather(table, labels)
        image = preprocessing.preprocess_for_eval(parsed["image"], image_size)
        return image, labels

    dataset = examples_lib.records(files, compression)
    if max_examples:
        dataset = dataset.take(max_examples)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.padded_batch(
        batch_size,
        padded_shapes=([image_size, image_size, 3], [None]),
        padding_values=(0.0, tf.constant(-1, tf.int64)),
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
