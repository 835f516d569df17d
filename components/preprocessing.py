"""Image preprocessing shared by training, evaluation and the exported model.

One implementation: the evaluator, the trainer's eval input and the exported
SavedModel's signatures all call `preprocess_for_eval`, so a served model sees
exactly what it was evaluated on. Training augmentations (inception crop,
flip, RandAugment, Mixup) are Model Garden's ops, applied in the trainer's
input pipeline on top of `decode_image`.

Pixel convention: float32 RGB, normalized with the ImageNet mean and standard
deviation (Model Garden's `normalize_image`), shape [H, W, 3].
"""

from __future__ import annotations

import tensorflow as tf
from official.vision.ops import preprocess_ops

# Eval crop: resize so the crop covers image_size / (image_size + 32) of the
# shorter side, the ratio Model Garden and timm use (0.875 at 224).
CROP_PADDING = 32


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF or BMP bytes to uint8 RGB [H, W, 3].

    Args:
      image_bytes: a scalar string tensor.

    Returns:
      A uint8 tensor with 3 channels (grayscale is tiled, alpha dropped).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def center_crop_and_resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Central crop of ratio size/(size+32), resized to image_size square.

    Args:
      image: [H, W, 3] image of any numeric dtype.
      image_size: the output side.

    Returns:
      float32 [image_size, image_size, 3], values in the input's range.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    ratio = image_size / (image_size + CROP_PADDING)
    crop = tf.cast(
        ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32
    )
    crop = tf.maximum(crop, 1)
    offset_h = (height - crop + 1) // 2
    offset_w = (width - crop + 1) // 2
    image = tf.image.crop_to_bounding_box(image, offset_h, offset_w, crop, crop)
    image = tf.image.resize(
        image, [image_size, image_size], method=tf.image.ResizeMethod.BILINEAR
    )
    return tf.ensure_shape(image, [image_size, image_size, 3])


def normalize(image: tf.Tensor) -> tf.Tensor:
    """uint8-range RGB to the model's input: (x - mean) / std, float32."""
    return preprocess_ops.normalize_image(
        tf.cast(image, tf.float32),
        offset=preprocess_ops.MEAN_RGB,
        scale=preprocess_ops.STDDEV_RGB,
    )


def preprocess_for_eval(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image to model input: decode, center crop, resize, normalize.

    Args:
      image_bytes: a scalar string tensor (JPEG, PNG, ...).
      image_size: the model's input resolution.

    Returns:
      float32 [image_size, image_size, 3].
    """
    return preprocess_image_for_eval(decode_image(image_bytes), image_size)


def preprocess_image_for_eval(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decoded uint8 [H, W, 3] image to model input (see above)."""
    return normalize(center_crop_and_resize(image, image_size))
