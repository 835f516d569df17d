"""Training-side preprocessing: crops, flips, RandAugment, Mixup, targets.

Every augmentation is Model Garden's op (`official.vision.ops`), composed as
its classification input pipeline composes them: inception crop on the
encoded JPEG (only the crop window is decoded), flip, resize, RandAugment on
the uint8-range image, then the shared `preprocessing.normalize`. Evaluation
never comes through here: it uses `preprocessing.preprocess_for_eval`, the
single eval path the Evaluator and the exported model share.

Every random draw here is stateless: the ops run under `rng.keyed_draws`
with the key of the example (or, for Mixup, of the batch) they work on, so
an example's augmentation depends on the run's seed and its position in
the input stream only, and a resumed run repeats it exactly.

Targets are dense float32 vectors of the class count in every mode, so the
loss, the metrics and the TPU step see one static shape:

- single-label: a one-hot row smoothed as y(1-ls) + ls/C (the convention of
  Model Garden's `MixupAndCutmix`, which produces them when Mixup is on);
- multi-label: a multi-hot row (the given scores, else 1, at the labels),
  smoothed as y(1-ls) + ls/2 for the sigmoid loss.
"""

from __future__ import annotations

import tensorflow as tf
from official.vision.ops import augment as mg_augment
from official.vision.ops import preprocess_ops

from components import preprocessing
from components.trainer import config as config_lib
from components.trainer import rng


def decode_and_inception_crop(
    image_bytes: tf.Tensor,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Decodes a random-resized (inception) crop of an encoded image.

    JPEGs decode only the crop window (`decode_and_crop_jpeg`); other
    formats decode fully first. When no crop satisfying the constraints is
    found in 10 attempts, Model Garden's fallback applies: a center crop.

    Args:
      image_bytes: a scalar string tensor.
      area_range: the crop's area as a fraction of the image.
      aspect_range: the crop's width / height.

    Returns:
      uint8 [h, w, 3], h and w data-dependent.
    """

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        crop = preprocess_ops.random_crop_image_v2(
            image_bytes,
            shape,
            aspect_ratio_range=aspect_range,
            area_range=area_range,
        )
        return tf.cond(
            tf.reduce_all(tf.equal(tf.shape(crop), shape)),
            lambda: preprocess_ops.center_crop_image_v2(image_bytes, shape),
            lambda: crop,
        )

    def other():
        image = preprocessing.decode_image(image_bytes)
        crop = preprocess_ops.random_crop_image(
            image, aspect_ratio_range=aspect_range, area_range=area_range
        )
        return tf.cond(
            tf.reduce_all(tf.equal(tf.shape(crop), tf.shape(image))),
            lambda: preprocess_ops.center_crop_image(image),
            lambda: crop,
        )

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image = tf.cast(image, tf.uint8)
    image.set_shape([None, None, 3])
    return image


def preprocess_for_train(
    image_bytes: tf.Tensor,
    image_size: int,
    augment: config_lib.AugmentConfig,
    key: tf.Tensor,
) -> tf.Tensor:
    """Encoded image to an augmented, normalized training input.

    Args:
      image_bytes: a scalar string tensor.
      image_size: the output side.
      augment: which augmentations to apply.
      key: the example's int64 [2] stateless seed (`rng.element_key`);
        every crop, flip and RandAugment draw derives from it.

    Returns:
      float32 [image_size, image_size, 3], normalized like the eval input.
    """
    with rng.keyed_draws(key):
        return _augment(image_bytes, image_size, augment)


def _augment(
    image_bytes: tf.Tensor,
    image_size: int,
    augment: config_lib.AugmentConfig,
) -> tf.Tensor:
    if augment.inception_crop:
        image = decode_and_inception_crop(
            image_bytes,
            tuple(augment.crop_area_range),
            tuple(augment.crop_aspect_range),
        )
    else:
        image = preprocessing.decode_image(image_bytes)
    if augment.flip:
        image, _, _ = preprocess_ops.random_horizontal_flip(image)
    if augment.inception_crop:
        # The crop already chose the content; stretch it to the square.
        image = tf.image.resize(image, [image_size, image_size])
    else:
        image = preprocessing.center_crop_and_resize(image, image_size)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    if augment.randaug_layers > 0:
        # RandAugment works on the 0..255 range (it casts to uint8 inside
        # and back to the input dtype).
        image = mg_augment.RandAugment(
            num_layers=augment.randaug_layers,
            magnitude=augment.randaug_magnitude,
        ).distort(image)
    image = preprocessing.normalize(image)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def single_label_target(
    label: tf.Tensor, num_classes: int, label_smoothing: float
) -> tf.Tensor:
    """A smoothed one-hot row: y(1-ls) + ls/C.

    Args:
      label: an int scalar class index.
      num_classes: the row's length C.
      label_smoothing: ls.

    Returns:
      float32 [num_classes].
    """
    off = label_smoothing / num_classes
    return tf.one_hot(
        tf.cast(label, tf.int32),
        num_classes,
        on_value=1.0 - label_smoothing + off,
        off_value=off,
        dtype=tf.float32,
    )


def multi_hot_target(
    labels: tf.Tensor,
    num_classes: int,
    scores: tf.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tf.Tensor:
    """A fixed-depth multi-hot row for the sigmoid loss.

    Args:
      labels: int [n] class indices (n may be 0; duplicates allowed).
      num_classes: the row's length.
      scores: optional float [n] soft targets aligned with `labels` (an
        empty tensor means none were given); duplicates keep the largest.
      label_smoothing: ls: targets become y(1-ls) + ls/2.

    Returns:
      float32 [num_classes] with values in [0, 1].
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    if scores is None:
        values = tf.ones_like(labels, tf.float32)
    else:
        scores = tf.reshape(tf.cast(scores, tf.float32), [-1])
        # Records carry either one score per label or none at all.
        values = tf.cond(
            tf.equal(tf.size(scores), tf.size(labels)),
            lambda: scores,
            lambda: tf.ones_like(labels, tf.float32),
        )
    # big_vision's onehot(multi=True): scatter, keeping the max per class,
    # then clip to [0, 1].
    target = tf.tensor_scatter_nd_max(
        tf.zeros([num_classes], tf.float32), labels[:, None], values
    )
    target = tf.clip_by_value(target, 0.0, 1.0)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return tf.ensure_shape(target, [num_classes])


class BatchMixup:
    """Mixup (and optionally CutMix) on a batch, with smoothed targets.

    Model Garden's `MixupAndCutmix`: each image is mixed with the batch
    reversed, lambda ~ Beta(alpha, alpha) per image; it takes int labels
    and returns the smoothed one-hot rows mixed with the same lambda.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float,
        cutmix_alpha: float,
        label_smoothing: float,
    ):
        """Builds the op.

        Args:
          num_classes: the target width.
          mixup_alpha: Mixup's alpha (0: off).
          cutmix_alpha: CutMix's alpha (0: off).
          label_smoothing: smoothing of the one-hot rows before mixing.
        """
        self._op = mg_augment.MixupAndCutmix(
            num_classes=num_classes,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            label_smoothing=label_smoothing,
        )

    def __call__(
        self, images: tf.Tensor, labels: tf.Tensor, key: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Mixes a batch.

        Args:
          images: float32 [B, H, W, 3] with a static B.
          labels: int [B] class indices.
          key: the batch's int64 [2] stateless seed (`rng.element_key`):
            the Mixup/CutMix choice, lambdas and boxes derive from it.

        Returns:
          (images [B, H, W, 3], targets float32 [B, num_classes]).
        """
        with rng.keyed_draws(key):
            mixed, targets = self._op(images, labels)
        mixed = tf.ensure_shape(mixed, images.shape)
        targets = tf.ensure_shape(
            tf.cast(targets, tf.float32),
            [images.shape[0], self._op.num_classes],
        )
        return mixed, targets
