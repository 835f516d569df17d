"""CPU-tuned kernels of the fused relative attention.

`RelativeAttention` (Eq. 3) projects q, k and v with one matmul, moves
heads before tokens with a transpose, and lets autodiff differentiate its
softmax. On CPU those steps cost more than they need to, and each
function here replaces one, with the same values and gradients but for
one rounding: `inference_attention` adds the bias in the compute dtype
(tests/coatnet_tf/kernels_test.py):

- `head_weights` and `head_projections`, inference: q, k and v of every
  head as broadcast batched matmuls that write [heads, B, N, d]
  directly, with no transpose of the projection's output.
- `inference_attention`: heads major, the scale and the relative bias
  become the logits' matmul's epilogue.
- `attention`, training: softmax(q k^T + bias) v with a hand-written
  gradient. The softmax gradient needs, per query, the sum of its
  probabilities times their gradients; that sum equals the dot product
  of the output's gradient with the output (FlashAttention's row term),
  a pass over [B, heads, N, d] instead of [B, heads, N, N], and the
  logits' gradient takes two passes instead of four; the bias gradient,
  a sum over the batch, is a ones-row matmul.
"""

from __future__ import annotations

import tensorflow as tf

from coatnet_tf.kernels import cpu_ops


def head_weights(
    kernel: tf.Tensor, bias: tf.Tensor, heads: int
) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """The qkv projection's weights laid out per head, for inference.

    Args:
      kernel: [C, 3 heads d], q, k and v in that order, heads major within
        each (the dense layer's kernel).
      bias: [3 heads d].
      heads: number of heads.

    Returns:
      ([q, k, v kernels, each [heads, C, d]], [q, k, v biases, each
      [heads, 1, d]]), in kernel's and bias's dtypes.
    """
    c = kernel.shape[0]
    d = kernel.shape[-1] // (3 * heads)
    kernels = tf.transpose(tf.reshape(kernel, [c, 3, heads, d]), [1, 2, 0, 3])
    return tf.unstack(kernels), tf.unstack(tf.reshape(bias, [3, heads, 1, d]))


def head_projections(
    x: tf.Tensor,
    kernels: list[tf.Tensor],
    biases: list[tf.Tensor],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """q, k and v of every head, heads major, without a transpose.

    A dense layer over tokens writes [B N, 3 heads d], and the reference
    transposes the whole projection to [B, heads, N, d]. Here each of q,
    k and v is a batched matmul of the tokens [1, B N, C] with the
    kernel's heads [heads, C, d] (`head_weights`), broadcast over the
    heads, which writes [heads, B N, d]: the layout `attention` at
    inference takes. On S3 of coatnet-0 at batch 16 (AMD EPYC with
    AVX512_BF16) three such matmuls took as long as the one dense matmul
    (8.5 against 8.0 ms in float32), which with its transpose took 9.3
    to 12.3.

    For inference: the kernel's gradient would be summed over a broadcast
    axis, so training keeps the dense layer.

    Args:
      x: tokens [B, H, W, C].
      kernels: `head_weights`' q, k and v kernels, in x's dtype.
      biases: `head_weights`' q, k and v biases, in x's dtype.

    Returns:
      (q, k, v), each [heads, B, H W, d] in x's dtype; q not scaled.
    """
    _, h, w, c = x.shape
    tokens = tf.reshape(x, [1, -1, c])
    heads, d = kernels[0].shape[0], kernels[0].shape[-1]
    return tuple(
        tf.reshape(tf.matmul(tokens, k) + b, [heads, -1, h * w, d])
        for k, b in zip(kernels, biases)
    )


def inference_attention(
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    bias: tf.Tensor,
    scale: float,
) -> tf.Tensor:
    """softmax(q k^T scale + bias) v, heads major, for inference.

    TensorFlow's graph optimizer runs a batched matmul followed by a
    multiply with a scalar and an add as one oneDNN matmul whose epilogue
    scales and adds, when the addend has the shape [B', 1, N, N], B' the
    product's first axis. Heads major, the relative bias [heads, 1, N, N]
    is such an addend: the logits are written once, biased, where the
    reference writes them, casts them, adds the bias and casts again.
    The bias is added in the compute dtype: under mixed_bfloat16 the
    bfloat16 logits' sum is rounded, and the softmax (oneDNN's, float32
    inside) reads it. S3's attention core of coatnet-0 at batch 16 (AMD
    EPYC with AVX512_BF16): float32 9.33 -> 8.24 ms, bfloat16 8.36 ->
    5.42 ms, the bfloat16 core's error against float64 3.8e-3 -> 6.6e-3.

    Args:
      q: [heads, B, N, d], not scaled.
      k: [heads, B, N, d].
      v: [heads, B, N, d].
      bias: [heads, 1, N, N] in q's dtype.
      scale: 1 / sqrt(d).

    Returns:
      [heads, B, N, d] in v's dtype.
    """
    logits = tf.matmul(q, k, transpose_b=True) * tf.cast(scale, q.dtype)
    return tf.matmul(tf.nn.softmax(logits + bias, axis=-1), v)


def _batch_sum(x: tf.Tensor) -> tf.Tensor:
    """x summed over its first axis, by `cpu_ops.column_sums`.

    A sum over the batch of [B, heads, N, N] float32 maps: for one S3
    map of coatnet-0 at batch 16, 0.64 ms against 0.99 for TensorFlow's
    reduction over the leading axis (AMD EPYC with AVX512_BF16).
    """
    rows = tf.reshape(x, [tf.shape(x)[0], -1])
    return tf.reshape(cpu_ops.column_sums(rows), x.shape[1:])


@tf.custom_gradient
def attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, bias: tf.Tensor):
    """softmax(q k^T + bias) v, for training, with a hand-written gradient.

    Logits, bias and softmax in float32, as `RelativeAttention.attend`.
    With P the softmax, O = P v and G the gradient of O, the logits'
    gradient is P (P' - r), P' = G v^T, r_i = sum_j P_ij P'_ij; and
    r_i = G_i . sum_j P_ij v_j = G_i . O_i, a d-long dot product per
    query instead of an N-long one (r is taken from O rounded to the
    compute dtype, as the reference's P' is). Per S3 block of coatnet-0
    at batch 16 the reference's softmax gradient made four passes over
    the [16, 12, 196, 196] logits and its bias gradient a fifth.

    Args:
      q: [B, heads, N, d], already scaled by 1 / sqrt(d).
      k: [B, heads, N, d].
      v: [B, heads, N, d].
      bias: [heads, N, N] float32.

    Returns:
      [B, heads, N, d] in v's dtype.
    """
    logits = tf.matmul(q, k, transpose_b=True)
    probs = tf.nn.softmax(tf.cast(logits, tf.float32) + bias, axis=-1)
    weights = tf.cast(probs, v.dtype)
    out = tf.matmul(weights, v)

    def grad(out_grad):
        probs_grad = tf.matmul(out_grad, v, transpose_b=True)
        row_term = tf.reduce_sum(
            tf.cast(out_grad, tf.float32) * tf.cast(out, tf.float32),
            axis=-1,
            keepdims=True,
        )
        logits_grad = probs * (tf.cast(probs_grad, tf.float32) - row_term)
        compute_grad = tf.cast(logits_grad, q.dtype)
        q_grad = tf.matmul(compute_grad, k)
        k_grad = tf.matmul(compute_grad, q, transpose_a=True)
        v_grad = tf.matmul(weights, out_grad, transpose_a=True)
        return q_grad, k_grad, v_grad, _batch_sum(logits_grad)

    return out, grad
