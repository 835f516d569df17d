"""The Evaluator's reading of an Examples artifact's split.

The layout, listing, compression and parse spec are the Examples
artifact's (`artifacts.examples`); this module adds what only evaluation
needs: batches of preprocessed images with padded label lists, their ids
mapped onto the model's (`examples_lib.label_mapping`). Images go through
`components.preprocessing.preprocess_for_eval`, the same function the
exported SavedModel calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from artifacts import examples as examples_lib
from components import preprocessing


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
      mapping: optional data id -> model id table
        (`examples_lib.label_mapping`).
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
