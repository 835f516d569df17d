"""CPU-tuned numerical kernels of the fused CoAtNet layers.

3x3 convolutions whose gradients run as matmuls and forward convs; the
1x1 convolution as one matmul, also with the squeeze-excitation gate
folded into its kernel, or with a training BatchNorm whose statistics
come from its input; weight gradients split in two halves of rows;
BatchNorm folding and 2x2 subsampling for inference; the BatchNorm
moving-average update; the inference LayerNorm in the form oneDNN's
kernel replaces (the GELUs are in `gelu_ops`). Each exists because a
profile of CoAtNet steps on CPU showed the generic op slower (each
docstring says by how much; docs/performance.md has the profiles).
`coatnet_tf.kernels.fused` composes them into layers; every function
equals the plain TensorFlow op it replaces, in values and gradients
(tests/coatnet_tf/kernels_test.py).
"""

from __future__ import annotations

import tensorflow as tf


def layer_norm(
    x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float
) -> tf.Tensor:
    """LayerNorm over the last axis, at inference, in oneDNN's fused form.

    TensorFlow's graph optimizer rewrites one graph of LayerNorm into
    oneDNN's layer normalization (`_MklLayerNorm`: one kernel, its
    statistics in float32, where tf_keras's graph makes five passes over
    the rows): rows of rank 2, reshaped to [1, rows, C, 1], normalized
    by a training-mode `FusedBatchNormV3` with scale and offset `Fill`ed
    with ones and zeros, reshaped back, times gamma, plus beta. This
    writes that graph. Its fusion needs the rows' count unknown when the
    graph is optimized, that is, a batch axis of unknown size, as in a
    served model; with a static batch the `Fill`s are folded into
    constants, the graph stays unfused and is slower than tf_keras's, so
    callers take this for unknown batches only.

    In bfloat16 the kernel reads gamma and beta in bfloat16.

    Args:
      x: [..., C] with C static.
      gamma: [C] scale.
      beta: [C] offset.
      epsilon: added to the variance. Given to the op as it is, where
        `tf.compat.v1.nn.fused_batch_norm` would raise it to 1.001e-5.

    Returns:
      x's shape and dtype.
    """
    c = x.shape[-1]
    rows = tf.reshape(x, [-1, c])
    n = tf.shape(rows)[:1]
    empty = tf.constant([], tf.float32)
    y = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(rows, tf.concat([[1], n, [c, 1]], 0)),
        scale=tf.fill(n, 1.0),
        offset=tf.fill(n, 0.0),
        mean=empty,
        variance=empty,
        epsilon=epsilon,
        data_format="NCHW",
        is_training=True,
    )[0]
    y = tf.reshape(y, tf.shape(rows))
    # beta + y * gamma: the rewrite's pattern, operands in its order.
    y = tf.cast(beta, x.dtype) + y * tf.cast(gamma, x.dtype)
    return tf.reshape(y, tf.shape(x))


def column_sums(rows: tf.Tensor) -> tf.Tensor:
    """The sums of a matrix's columns, as a ones-row matmul.

    One oneDNN matmul, accumulating in float32 also for bfloat16 rows,
    where TensorFlow's reductions sum a bfloat16 tensor in bfloat16 (see
    `bias_add`) and, over a leading axis, read more slowly.

    Args:
      rows: [R, K].

    Returns:
      [K], in rows' dtype.
    """
    ones = tf.ones(tf.stack([1, tf.shape(rows)[0]]), rows.dtype)
    return tf.reshape(tf.matmul(ones, rows), [-1])


@tf.custom_gradient
def _bias_add_summed_by_matmul(x: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    def grad(dy):
        return dy, column_sums(tf.reshape(dy, [-1, dy.shape[-1]]))

    return tf.nn.bias_add(x, bias), grad


def bias_add(x: tf.Tensor, bias: tf.Tensor, training=False) -> tf.Tensor:
    """x + bias over the last axis; in training, its gradient a matmul.

    A bias's gradient sums the output gradient over every pixel of the
    batch. TensorFlow's CPU kernel for it (`BiasAddGrad`) accumulates a
    bfloat16 gradient in bfloat16: over an S1 map of coatnet-0 at batch
    16 (50176 rows of 384 standard normals), sums of typical size 142 came
    out wrong by up to 232, where the summed float32 values round to
    within 1.6; in coatnet-0's bfloat16 training step, bias gradients came
    out 15% to 54% (median 22%) from the float32 model's. Here the sum is
    a row of ones times the gradient, one oneDNN matmul accumulating in
    float32 (median 0.9%, below the kernels' 1.8%). Its speed is about
    that of BiasAddGrad: per gradient of coatnet-0 at batch 16 from 1.6 ms
    faster to 0.6 ms slower (AMD EPYC with AVX512_BF16), and whole steps
    the same within that host's noise. Inference keeps the plain op,
    which oneDNN fuses into a preceding matmul or conv.

    Args:
      x: [..., C].
      bias: [C], cast to x's dtype.
      training: use the matmul gradient.

    Returns:
      x + bias, in x's dtype.
    """
    bias = tf.cast(bias, x.dtype)
    if training:
        return _bias_add_summed_by_matmul(x, bias)
    return tf.nn.bias_add(x, bias)


def spatial_mean(x: tf.Tensor) -> tf.Tensor:
    """The mean of x over its two spatial axes, as one average pool.

    For the squeeze-excitation squeeze at inference. A pool whose window
    is the whole map runs oneDNN's pooling, which reads bfloat16 at half
    the cost of float32; `tf.reduce_mean` runs Eigen's reduction, and a
    ones-row matmul (this function's earlier form) has one output row
    per image, which oneDNN runs slower in bfloat16 than in float32. An
    S1 map of coatnet-0 at batch 16 ([16, 56, 56, 384], AMD EPYC with
    AVX512_BF16), medians of 25: float32 2.08 ms (reduce_mean 4.85,
    matmul 2.02); bfloat16 1.15 ms (reduce_mean 1.86, matmul 2.33).
    The pool accumulates bfloat16 in float32 and rounds once.

    Args:
      x: [B, H, W, C].

    Returns:
      [B, C], in x's dtype.
    """
    _, h, w, c = x.shape
    if h is None or w is None or c is None:
        return tf.reduce_mean(x, axis=[1, 2])
    pooled = tf.nn.avg_pool2d(x, [h, w], [h, w], "VALID")  # [B, 1, 1, C]
    return tf.reshape(pooled, [-1, c])


def row_halves(rows) -> int:
    """Row groups for a weight gradient: 2 for an even static count, else 1.

    A weight gradient x^T dy sums over every pixel of the batch (K rows)
    into a small [C, O] output. oneDNN parallelizes such a matmul over its
    output blocks, which leaves cores idle when C and O are small; splitting
    K into two halves (a batched matmul of 2, then a sum) keeps both busy:
    64 -> 107 GFLOP/s for the stem's 3x3 kernel gradient, 79 -> 106 for
    the [401408, 27] x [401408, 64] one of the stride-2 stem conv, 83 ->
    107 for a [50176, 96] x [50176, 384] MBConv expansion.

    Args:
      rows: the static number of rows K, or None.

    Returns:
      2 or 1.
    """
    return 2 if rows is not None and rows % 2 == 0 else 1


def matmul_tn(a: tf.Tensor, b: tf.Tensor, groups: int) -> tf.Tensor:
    """a^T b, summing over rows in `groups` equal parts (`row_halves`).

    Args:
      a: [K, M].
      b: [K, N].
      groups: a divisor of K; 1 is a plain matmul.

    Returns:
      [M, N].
    """
    if groups == 1:
        return tf.matmul(a, b, transpose_a=True)
    a = tf.reshape(a, [groups, -1, a.shape[-1]])
    b = tf.reshape(b, [groups, -1, b.shape[-1]])
    return tf.reduce_sum(tf.matmul(a, b, transpose_a=True), axis=0)


def conv3x3_kernel_grad(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """Kernel gradient of a 3x3, stride-1, SAME conv, as 9 matmuls.

    Flatten the zero-padded input [B, H + 2, W + 2, C] row-major: output
    pixel p of a tap (kh, kw) reads input pixel p + s, s = kh (W + 2) + kw,
    a fixed offset. Pad dy to the same grid (zero rows and columns at the
    end), so the tap's gradient is x_flat[s:s + n]^T dy_flat: one matmul on
    a contiguous slice (no copy), never mixing images, because a valid
    p + s stays inside p's padded image. oneDNN's own backward-weights
    kernel runs these shapes (tiny C, large H x W) ~4x below matmul speed.
    Each tap's n rows are summed in two halves, a batched matmul of 2 on
    the same slice (`row_halves`); a zero image padded after x keeps
    every slice in range.

    Args:
      x: conv input [B, H, W, C].
      dy: gradient of the conv output [B, H, W, O].

    Returns:
      [3, 3, C, O], the kernel gradient.
    """
    b, h, w, c = x.shape
    o = dy.shape[-1]
    width = w + 2
    if b is None:  # Unknown batch: one group over all rows.
        n, groups = tf.shape(x)[0] * (h + 2) * width, 1
    else:
        n = b * (h + 2) * width  # Rows of dy_flat.
        groups = row_halves(n)
    # One zero image after the batch: (H + 2)(W + 2) > 2 (W + 2) + 2 rows,
    # enough for the largest offset.
    x_flat = tf.pad(x, [[0, 1], [1, 1], [1, 1], [0, 0]])
    x_flat = tf.reshape(x_flat, [-1, c])
    dy_flat = tf.pad(dy, [[0, 0], [0, 2], [0, 2], [0, 0]])
    dy_flat = tf.reshape(dy_flat, [groups, -1, o])
    taps = []
    for kh in range(3):
        for kw in range(3):
            s = kh * width + kw
            rows = tf.reshape(x_flat[s : s + n], [groups, -1, c])
            tap = tf.matmul(rows, dy_flat, transpose_a=True)
            taps.append(tf.reduce_sum(tap, axis=0))
    return tf.reshape(tf.stack(taps), [3, 3, c, o])


def conv3x3_input_grad(dy: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Input gradient of a 3x3, stride-1, SAME conv, as a forward conv.

    With one pixel of padding on every side, the gradient is the forward
    conv of dy with the kernel turned 180 degrees and its channel axes
    swapped. Written so, it runs as the fast forward conv kernel; TF's own
    `Conv2DBackpropInput` has no oneDNN kernel for bfloat16 on CPUs without
    AVX-512, and its Eigen fallback ran ~25x below the matmul rate there.

    Args:
      dy: gradient of the conv output [B, H, W, O].
      kernel: [3, 3, C, O].

    Returns:
      [B, H, W, C], the input gradient.
    """
    flipped = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
    return tf.nn.conv2d(dy, flipped, strides=1, padding="SAME")


@tf.custom_gradient
def conv3x3_same(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """3x3, stride-1, SAME conv2d with matmul/conv-based gradients."""
    y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")

    def grad(dy):
        return conv3x3_input_grad(dy, kernel), conv3x3_kernel_grad(x, dy)

    return y, grad


def _stride2_patches(x: tf.Tensor) -> tf.Tensor:
    """The 3x3 patches a stride-2 SAME conv reads, [B, H/2, W/2, 9 C].

    Patch order is (kh, kw, c), the order of kernel.reshape([9 C, O]). For
    even sides SAME pads one row and column at the end, so output (i, j)
    reads x[2i + kh, 2j + kw]: tap (kh, kw) is the phase (kh % 2, kw % 2)
    of x shifted by (kh // 2, kw // 2), a slice of a reshape. Nine slices
    and a concat take half the time of `tf.image.extract_patches` (23
    against 49 ms for the stem of coatnet-0 at batch 16); odd sides use it.
    """
    _, h, w, c = x.shape
    if h % 2 or w % 2:
        return tf.image.extract_patches(
            x, [1, 3, 3, 1], [1, 2, 2, 1], [1, 1, 1, 1], "SAME"
        )
    # Two zero rows and columns keep the phase reshape even.
    padded = tf.pad(x, [[0, 0], [0, 2], [0, 2], [0, 0]])
    phases = tf.reshape(padded, [-1, h // 2 + 1, 2, w // 2 + 1, 2, c])
    taps = [
        phases[
            :,
            kh // 2 : kh // 2 + h // 2,
            kh % 2,
            kw // 2 : kw // 2 + w // 2,
            kw % 2,
        ]
        for kh in range(3)
        for kw in range(3)
    ]
    return tf.concat(taps, axis=-1)


@tf.custom_gradient
def conv3x3_stride2(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """3x3, stride-2, SAME conv2d whose kernel gradient is one matmul.

    For the first conv of the stem, whose input is the image: its 3x3
    patches ([B, H/2, W/2, 9 C], C = 3, `_stride2_patches`) are small,
    and patches^T dy is one matmul instead of `Conv2DBackpropFilter`,
    which in float32 (oneDNN) is only as fast as these patches plus the
    matmul, and in bfloat16 without AVX-512 (Eigen) ~40x slower. The
    input gradient keeps TF's op; when x is the image it has no consumer
    and the graph drops it.
    """
    y = tf.nn.conv2d(x, kernel, strides=2, padding="SAME")

    def grad(dy):
        dx = tf.nn.conv2d_transpose(
            dy, kernel, tf.shape(x), strides=2, padding="SAME"
        )
        patches = _stride2_patches(x)
        depth, out = patches.shape[-1], dy.shape[-1]
        dk = matmul_tn(
            tf.reshape(patches, [-1, depth]),
            tf.reshape(dy, [-1, out]),
            row_halves(patches.shape[:3].num_elements()),
        )
        return dx, tf.reshape(dk, kernel.shape)

    return y, grad


# Input widths up to this split the kernel gradient's rows in two
# (`row_halves`); wider inputs measured no gain.
_SPLIT_MAX_WIDTH = 96


@tf.custom_gradient
def pixel_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """A 1x1 conv of stride 1: x [B, H, W, C] times kernel [C, O].

    One matmul over the B H W pixels, with matmul gradients; the kernel
    gradient of a narrow input runs in two halves (`row_halves`).
    """
    c, o = kernel.shape
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, c]), kernel)
    y = tf.reshape(y, tf.concat([shape[:3], [o]], 0))
    y.set_shape(x.shape[:3].concatenate([o]))

    def grad(dy):
        dy_flat = tf.reshape(dy, [-1, o])
        dx = tf.reshape(tf.matmul(dy_flat, kernel, transpose_b=True), shape)
        rows = x.shape[:3].num_elements()
        groups = row_halves(rows) if c <= _SPLIT_MAX_WIDTH else 1
        return dx, matmul_tn(tf.reshape(x, [-1, c]), dy_flat, groups)

    return y, grad


def conv1x1(x: tf.Tensor, kernel: tf.Tensor, stride: int = 1) -> tf.Tensor:
    """A 1x1 conv (stride 1 or 2, no padding) as one matmul over pixels.

    The same values as `tf.nn.conv2d`; as a matmul its gradients are
    matmuls too (`pixel_matmul`). TF's CPU conv backprop ops fall far below
    the matmul rate for 1x1 kernels (oneDNN ~2x in float32; Eigen's
    bfloat16 fallback on CPUs without AVX-512 ~25x).

    Args:
      x: [B, H, W, C].
      kernel: [1, 1, C, O].
      stride: 1, or 2 to read x[:, ::2, ::2] (odd sides round up).

    Returns:
      [B, ceil(H / stride), ceil(W / stride), O].
    """
    if stride == 2:
        x = subsample_2x(x)
    return pixel_matmul(x, kernel_matrix(kernel))


def kernel_matrix(kernel: tf.Tensor) -> tf.Tensor:
    """A 1x1 conv kernel [1, 1, C, O] as the matrix [C, O].

    A reshape, not kernel[0, 0]: a slice's gradient is a scatter into zeros
    (`StridedSliceGrad`), a reshape's is free.
    """
    return tf.reshape(kernel, kernel.shape[2:])


def gated_pixel_matmul(
    x: tf.Tensor, gate: tf.Tensor, kernel: tf.Tensor
) -> tf.Tensor:
    """(x * gate) @ kernel per pixel, with the gate folded into the kernel.

    The squeeze-excitation gate scales channels per image, so
    (x diag(g_b)) W = x (diag(g_b) W): one batched matmul with a [C, O]
    kernel per image replaces a full pass over x (and, in training, the
    passes of its gradient). Measured on MBConv projections (inference):
    30 ms against 38 ms for S1 of coatnet-0 at batch 16, 26 against 30
    for S2; the batched matmul is as fast as the plain one.

    Args:
      x: [B, H, W, C].
      gate: [B, C], per-image channel scales.
      kernel: [C, O].

    Returns:
      [B, H, W, O].
    """
    _, h, w, c = x.shape
    kernels = gate[:, :, None] * kernel  # [B, C, O]
    y = tf.matmul(tf.reshape(x, [-1, h * w, c]), kernels)
    return tf.reshape(y, [-1, h, w, kernel.shape[-1]])


def batch_normalized_pixel_matmul(
    x: tf.Tensor,
    kernel: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    epsilon: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training BatchNorm(x @ kernel), its batch statistics taken from x.

    A BatchNorm after a 1x1 conv reads and writes the conv's output
    several times (statistics, normalization, and twice as many passes for
    the gradient). Its statistics follow from the narrower input instead:
    with x_c = x - mean(x) and Cov = x_c^T x_c / N (float32),

        mean(x W) = mean(x) W,    var(x W)_o = w_o^T Cov w_o,

    and BatchNorm(x W) = x_c (W diag(s)) + beta, s = gamma / sqrt(var +
    eps): one matmul with the normalization in its kernel and bias. Cov
    costs a C x C matmul over the rows, a quarter of the conv's for an
    expansion of 4; the passes it saves cost more on a CPU (coatnet-0's
    S1 block at batch 16: 148 -> 123 ms forward plus backward).
    Gradients are those of the plain composition, by autodiff.

    Args:
      x: [B, H, W, C].
      kernel: [C, O], the 1x1 conv's kernel.
      gamma: [O], BatchNorm scale (float32).
      beta: [O], BatchNorm offset (float32).
      epsilon: BatchNorm epsilon.

    Returns:
      (y, mean, variance): y [B, H, W, O] in the dtype of x; the batch mean
      and variance of x @ kernel, [O] float32, for the moving averages
      (without gradients). The variance has Bessel's correction, as the
      one Keras's `BatchNormalization` averages; y is normalized by the
      biased one, as in the layer.
    """
    _, h, w, c = x.shape
    rows = tf.reshape(tf.cast(x, tf.float32), [-1, c])
    count = tf.cast(tf.shape(rows)[0], tf.float32)
    mean_x = tf.reduce_mean(rows, axis=0)
    centered = rows - mean_x
    groups = row_halves(x.shape[:3].num_elements())
    covariance = matmul_tn(centered, centered, groups) / count  # [C, C]
    kernel32 = tf.cast(kernel, tf.float32)
    # diag(W^T Cov W) >= 0; rounding may not keep it so.
    variance = tf.maximum(
        tf.reduce_sum(kernel32 * tf.matmul(covariance, kernel32), axis=0), 0.0
    )
    scale = gamma * tf.math.rsqrt(variance + epsilon)
    centered = tf.reshape(tf.cast(centered, x.dtype), [-1, h, w, c])
    y = pixel_matmul(centered, tf.cast(kernel32 * scale, x.dtype))
    y = bias_add(y, beta, training=True)
    mean = tf.linalg.matvec(kernel32, mean_x, transpose_a=True)
    variance = variance * count / tf.maximum(count - 1.0, 1.0)
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance)


def batch_norm_affine(norm, dtype) -> tuple[tf.Tensor, tf.Tensor]:
    """(scale, shift) with norm(x) = x * scale + shift at inference."""
    scale = norm.gamma * tf.math.rsqrt(norm.moving_variance + norm.epsilon)
    shift = norm.beta - norm.moving_mean * scale
    return tf.cast(scale, dtype), tf.cast(shift, dtype)


@tf.custom_gradient
def _subsample_2x_even(x: tf.Tensor) -> tf.Tensor:
    _, h, w, c = x.shape
    # The same pixels as a plain slice of a reshape: ~10x faster on CPU than
    # a strided slice.
    y = tf.reshape(x, [-1, h // 2, 2, w // 2, 2, c])[:, :, 0, :, 0, :]

    def grad(dy):
        # dy at the even pixels, zeros elsewhere: one pad, ~13x faster than
        # the slice's own gradient (`StridedSliceGrad`, 54 against 4 ms
        # for the first S1 block of coatnet-0 at batch 16).
        g = tf.reshape(dy, [-1, h // 2, 1, w // 2, 1, c])
        g = tf.pad(g, [[0, 0], [0, 0], [0, 1], [0, 0], [0, 1], [0, 0]])
        return tf.reshape(g, [-1, h, w, c])

    return y, grad


def subsample_2x(x: tf.Tensor) -> tf.Tensor:
    """x[:, ::2, ::2, :]: the pixels a 1x1 conv of stride 2 reads.

    Args:
      x: [B, H, W, C].

    Returns:
      [B, ceil(H / 2), ceil(W / 2), C].
    """
    _, h, w, _ = x.shape
    if h % 2 or w % 2:
        return x[:, ::2, ::2, :]
    return _subsample_2x_even(x)


def assign_moving_average(norm, mean: tf.Tensor, variance: tf.Tensor, count):
    """A BatchNorm layer's moving-average update from batch statistics.

    moving <- moving - (1 - momentum) (moving - value), for the mean and
    the variance, as the layer does in training; an empty batch (a
    replica's share of a short last batch, whose statistics are NaN)
    leaves the averages as they are.

    Args:
      norm: a `tf_keras.layers.BatchNormalization`.
      mean: the batch mean [C], float32.
      variance: the batch variance [C] (Bessel-corrected), float32.
      count: the number of elements the statistics cover (a scalar).
    """
    decay = tf.cast(1.0 - norm.momentum, tf.float32)
    for average, value in (
        (norm.moving_mean, mean),
        (norm.moving_variance, variance),
    ):
        delta = (average - tf.cast(value, average.dtype)) * decay
        delta = tf.where(count > 0, delta, tf.zeros_like(delta))
        average.assign_sub(delta)
