"""Numerical primitives shared by the CoAtNet layers.

GELU with a hand-written training gradient; a 3x3 convolution whose kernel
gradient runs as matmuls, and its layer `Conv3x3`; BatchNorm folding and
2x2 subsampling for inference; the stride-2 max pool of Eq. 4 and 5; and
the initializers. Most exist because a profile of CoAtNet steps on CPU
showed the generic op slower (each docstring says by how much).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

_register = tf_keras.saving.register_keras_serializable(package="coatnet")

DENSE_INIT = "glorot_uniform"  # A name: each layer gets its own instance.


def conv_init() -> tf_keras.initializers.Initializer:
    """He-style fan-out initializer for convolution kernels.

    A new instance per layer: an unseeded tf_keras initializer instance
    returns the same values on every call.

    Returns:
      A truncated-normal `VarianceScaling(2.0, "fan_out")` initializer.
    """
    return tf_keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="truncated_normal"
    )


_SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)


@tf.custom_gradient
def _gelu_exact_for_training(x: tf.Tensor) -> tf.Tensor:
    # Keeps x, x / sqrt(2) and Phi(x) for the backward pass, which then
    # takes 5 element-wise passes, about half of what autodiff of the
    # formula takes.
    u = x * _SQRT_HALF
    cdf = 0.5 + 0.5 * tf.math.erf(u)  # Phi(x)

    def grad(dy):
        # d/dx x Phi(x) = Phi(x) + x phi(x), phi(x) = exp(-u^2) / sqrt(2 pi);
        # square, negate and exp fuse into one pass on CPU.
        pdf = tf.exp(-tf.square(u))
        return dy * (cdf + x * pdf * _INV_SQRT_2PI)

    return x * cdf, grad


def gelu(x: tf.Tensor, approximate: bool, training=False) -> tf.Tensor:
    """GELU (App. A.1), exact erf form or its tanh approximation.

    Args:
      x: input of any float dtype.
      approximate: use the tanh approximation.
      training: use the exact form's hand-written gradient. Inference keeps
        the plain formula, which oneDNN fuses into a preceding matmul.

    Returns:
      x * Phi(x), same shape and dtype.
    """
    if approximate:
        return tf.nn.gelu(x, approximate=True)
    if training:
        return _gelu_exact_for_training(x)
    # 0.5 x (1 + erf(x / sqrt(2))). Written with erf because `tf.nn.gelu`
    # uses erfc, whose CPU kernel is ~2.5x slower than erf's.
    return 0.5 * x * (1.0 + tf.math.erf(x * _SQRT_HALF))


def max_pool_2x2(x: tf.Tensor) -> tf.Tensor:
    """The stride-2 max pool of Eq. 4 and 5; odd sides round up."""
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")


def conv3x3_kernel_grad(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """Kernel gradient of a 3x3, stride-1, SAME conv, as 9 matmuls.

    Flatten the zero-padded input [B, H + 2, W + 2, C] row-major: output
    pixel p of a tap (kh, kw) reads input pixel p + s, s = kh (W + 2) + kw,
    a fixed offset. Pad dy to the same grid (zero rows and columns at the
    end), so the tap's gradient is x_flat[s:]^T dy_flat[:n - s]: one matmul
    on a contiguous slice (no copy), never mixing images, because a valid
    p + s stays inside p's padded image. oneDNN's own backward-weights
    kernel runs these shapes (tiny C, large H x W) ~4x below matmul speed.

    Args:
      x: conv input [B, H, W, C].
      dy: gradient of the conv output [B, H, W, O].

    Returns:
      [3, 3, C, O], the kernel gradient.
    """
    c, o = x.shape[-1], dy.shape[-1]
    width = x.shape[2] + 2
    x_flat = tf.reshape(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), [-1, c])
    dy_flat = tf.reshape(tf.pad(dy, [[0, 0], [0, 2], [0, 2], [0, 0]]), [-1, o])
    n = tf.shape(x_flat)[0]
    taps = []
    for kh in range(3):
        for kw in range(3):
            s = kh * width + kw
            taps.append(
                tf.matmul(x_flat[s:], dy_flat[: n - s], transpose_a=True)
            )
    return tf.reshape(tf.stack(taps), [3, 3, c, o])


@tf.custom_gradient
def conv3x3_same(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """3x3, stride-1, SAME conv2d with a matmul-based kernel gradient."""
    y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")

    def grad(dy):
        dx = tf.nn.conv2d_transpose(
            dy, kernel, tf.shape(x), strides=1, padding="SAME"
        )
        return dx, conv3x3_kernel_grad(x, dy)

    return y, grad


def batch_norm_affine(norm, dtype) -> tuple[tf.Tensor, tf.Tensor]:
    """(scale, shift) with norm(x) = x * scale + shift at inference."""
    scale = norm.gamma * tf.math.rsqrt(norm.moving_variance + norm.epsilon)
    shift = norm.beta - norm.moving_mean * scale
    return tf.cast(scale, dtype), tf.cast(shift, dtype)


def subsample_2x(x: tf.Tensor) -> tf.Tensor:
    """x[:, ::2, ::2, :]: the pixels a 1x1 conv of stride 2 reads."""
    _, h, w, c = x.shape
    if h % 2 or w % 2:
        return x[:, ::2, ::2, :]
    # The same pixels as a plain slice of a reshape: ~10x faster on CPU than
    # a strided slice.
    return tf.reshape(x, [-1, h // 2, 2, w // 2, 2, c])[:, :, 0, :, 0, :]


@_register
class Conv3x3(tf_keras.layers.Conv2D):
    """`Conv2D(filters, 3, padding="same")` with a faster kernel gradient.

    Same variables and outputs as the Keras layer; only the backward pass
    differs (`conv3x3_same`). Used for the stride-1 stem conv, the largest
    3x3 conv of the model (the second conv of S0 at half resolution).

    Args:
      filters: output channels.
      **kwargs: other `Conv2D` arguments; kernel size, padding, strides and
        dilation are fixed.
    """

    def __init__(self, filters: int, **kwargs):
        for fixed in ("kernel_size", "padding", "strides", "dilation_rate"):
            kwargs.pop(fixed, None)
        super().__init__(filters, 3, padding="same", **kwargs)

    def convolution_op(self, inputs, kernel):
        return conv3x3_same(inputs, tf.convert_to_tensor(kernel))
