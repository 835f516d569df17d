"""Stateless, keyed random draws for the training input.

A resumed run is bit-equal to an unbroken one only if every train-time
random draw is a function of where it happens, not of how many draws came
before it in this process. TensorFlow's stateful random ops (the
`tf.random.uniform` family, `tf.image.sample_distorted_bounding_box`) keep a
hidden counter per op instance that no checkpoint saves; a restarted
process starts those counters again from zero.

Model Garden's augmentations (`official.vision.ops.augment.RandAugment`,
`MixupAndCutmix`, `preprocess_ops.random_crop_image_v2`,
`random_horizontal_flip`) draw through those stateful ops and take no
seeds. `keyed_draws(key)` keeps them unchanged and makes them stateless:
while a function that uses them is being traced (tf.data traces a map
function once, when the dataset is built), the stateful entry points are
routed to their `tf.random.stateless_*` counterparts, the n-th draw site of
the trace being seeded with `stateless_fold_in(key, n)`. `key` is a tensor
of the traced function, so each element draws from its own key.

Keys: `element_key(seed, stream, pipeline, index)` folds the run's seed,
the draw stream (per-example augmentation or per-batch Mixup), the input
pipeline and the element's position in that pipeline's stream into one
[2] int64 seed. Positions are counted by `Dataset.enumerate`, whose state a
tf.data iterator checkpoint saves, so a restored stream continues with the
keys an unbroken one would use.

The routing is process-wide while it lasts (Model Garden looks the ops up
as `tf.random.uniform` at call time), so traces under it are serialized by
a lock; they happen when a dataset is built, not while it runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import tensorflow as tf

# Draw streams of one input pipeline (`element_key`'s `stream`).
EXAMPLE_STREAM = 0
BATCH_STREAM = 1

_LOCK = threading.RLock()


def element_key(
    seed: int, stream: int, pipeline: int, index: tf.Tensor
) -> tf.Tensor:
    """The [2] int64 stateless seed of one element of an input stream.

    Args:
      seed: the run's seed.
      stream: `EXAMPLE_STREAM` or `BATCH_STREAM`.
      pipeline: the input pipeline's id.
      index: the element's position in that pipeline's stream (int64).

    Returns:
      An int64 [2] seed for `tf.random.stateless_*`.
    """
    key = tf.constant([seed, pipeline], tf.int64)
    key = tf.random.experimental.stateless_fold_in(key, stream)
    return tf.random.experimental.stateless_fold_in(
        key, tf.cast(index, tf.int64)
    )


class _Draws:
    """Stateless stand-ins for the stateful ops, seeded per draw site."""

    def __init__(self, key: tf.Tensor):
        self.key = tf.cast(key, tf.int64)
        self.count = 0

    def next_seed(self) -> tf.Tensor:
        seed = tf.random.experimental.stateless_fold_in(self.key, self.count)
        self.count += 1
        return seed

    def uniform(
        self,
        shape,
        minval=0,
        maxval=None,
        dtype=tf.float32,
        seed=None,
        name=None,
    ):
        del seed  # The key decides.
        return tf.random.stateless_uniform(
            shape, self.next_seed(), minval, maxval, dtype, name=name
        )

    def normal(
        self,
        shape,
        mean=0.0,
        stddev=1.0,
        dtype=tf.float32,
        seed=None,
        name=None,
    ):
        del seed
        return tf.random.stateless_normal(
            shape, self.next_seed(), mean, stddev, dtype, name=name
        )

    def gamma(
        self, shape, alpha, beta=None, dtype=tf.float32, seed=None, name=None
    ):
        del seed
        # tf.random.gamma draws `shape` samples per alpha; the stateless op
        # takes the full output shape.
        alpha = tf.convert_to_tensor(alpha, dtype)
        full = tf.concat(
            [tf.cast(shape, tf.int32), tf.shape(alpha, out_type=tf.int32)], 0
        )
        return tf.random.stateless_gamma(
            full, self.next_seed(), alpha, beta, dtype, name=name
        )

    def sample_distorted_bounding_box(
        self,
        image_size,
        bounding_boxes,
        seed=0,
        min_object_covered=0.1,
        aspect_ratio_range=None,
        area_range=None,
        max_attempts=None,
        use_image_if_no_bounding_boxes=None,
        name=None,
    ):
        del seed
        return tf.image.stateless_sample_distorted_bounding_box(
            image_size,
            bounding_boxes,
            self.next_seed(),
            min_object_covered=min_object_covered,
            aspect_ratio_range=aspect_ratio_range,
            area_range=area_range,
            max_attempts=max_attempts,
            use_image_if_no_bounding_boxes=use_image_if_no_bounding_boxes,
            name=name,
        )


# (module, attribute) pairs routed while tracing under `keyed_draws`.
_ROUTED = (
    (tf.random, "uniform"),
    (tf.random, "normal"),
    (tf.random, "gamma"),
    (tf.image, "sample_distorted_bounding_box"),
)


@contextlib.contextmanager
def keyed_draws(key: tf.Tensor) -> Iterator[_Draws]:
    """Routes stateful random ops traced inside to stateless ones.

    Use it only around graph construction (a tf.data map function, a
    `tf.function` body): eager calls would draw from one constant key.

    Args:
      key: an int64 [2] seed tensor of the function being traced, e.g.
        `element_key(...)`.

    Yields:
      The draw-site counter (its `count` is the number of draws traced).
    """
    draws = _Draws(key)
    with _LOCK:
        saved = [(mod, name, getattr(mod, name)) for mod, name in _ROUTED]
        try:
            for mod, name in _ROUTED:
                setattr(mod, name, getattr(draws, name))
            yield draws
        finally:
            for mod, name, original in saved:
                setattr(mod, name, original)
