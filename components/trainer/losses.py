"""Losses and the top-1 metric on dense float32 targets.

Logits arrive in float32 (coatnet_tf keeps its classifier in float32 under
`mixed_bfloat16`), and every reduction here is float32.
"""

from __future__ import annotations

import tensorflow as tf


def uses_sigmoid(kind: str, multi_label: bool) -> bool:
    """Whether the loss is the per-class sigmoid.

    Args:
      kind: "softmax", "sigmoid", or "auto" (sigmoid for multi-label).
      multi_label: whether the data is multi-label.

    Returns:
      True for the sigmoid cross-entropy.
    """
    if kind == "auto":
        return multi_label
    return kind == "sigmoid"


def per_example_loss(
    targets: tf.Tensor, logits: tf.Tensor, sigmoid: bool
) -> tf.Tensor:
    """Cross-entropy per example, not yet averaged.

    Args:
      targets: float [B, C] (smoothed one-hot, mixed, or multi-hot).
      logits: [B, C].
      sigmoid: per-class sigmoid cross-entropy summed over the classes
        (big_vision's sigmoid_xent); else softmax cross-entropy against
        the targets normalized to sum to 1 (a no-op for one-hot rows, the
        multi-label case otherwise).

    Returns:
      float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.float32)
    if sigmoid:
        return tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(
                labels=targets, logits=logits
            ),
            axis=-1,
        )
    total = tf.reduce_sum(targets, axis=-1, keepdims=True)
    targets = tf.math.divide_no_nan(targets, total)
    return tf.nn.softmax_cross_entropy_with_logits(
        labels=targets, logits=logits
    )


def top1_correct(
    logits: tf.Tensor, targets: tf.Tensor, sigmoid: bool
) -> tf.Tensor:
    """1.0 where the top-scored class is right, per example.

    Single-label (softmax): the top class is the target's argmax (the
    dominant label under Mixup). Sigmoid: precision at 1, the top class is
    one whose target is above 0.5 (a positive, after smoothing).

    Args:
      logits: [B, C].
      targets: float [B, C].
      sigmoid: whether the model is a sigmoid (multi-label) model.

    Returns:
      float32 [B] of 0 and 1.
    """
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    if sigmoid:
        hit = tf.gather(targets, predicted, axis=1, batch_dims=1) > 0.5
    else:
        hit = tf.equal(
            predicted, tf.argmax(targets, axis=-1, output_type=tf.int32)
        )
    return tf.cast(hit, tf.float32)
