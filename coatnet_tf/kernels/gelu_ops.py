"""GELU kernels of the fused CoAtNet layers.

- `gelu`, training: the exact GELU as XLA-fused element-wise kernels with
  a hand-written gradient, computed in float32 and rounded once. A 16-bit
  float has 65,536 values, so for bfloat16 and float16 both kernels read
  the float32 kernels' own results from two tables instead, the same
  values to the bit.
- `gelu_pass`, inference: the GELU after a conv as one oneDNN pass.

Each exists because a profile of CoAtNet steps on CPU showed the plain
ops slower (docstrings and comments say by how much; docs/performance.md
has the profiles). Values and gradients equal TensorFlow's GELU
(tests/coatnet_tf/kernels_test.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from coatnet_tf import layers

_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)


# The training GELU runs as two XLA-fused element-wise kernels, each one
# pass over memory; unfused, TF's CPU kernels take ~9 passes over the
# activations of S1 and S2 (4 bytes x 19M elements per S1 tensor at batch
# 16), and fusing halved its forward plus backward time. Training graphs
# only: inference keeps plain ops, which oneDNN fuses into the preceding
# matmul and which TF Serving runs without an XLA JIT.
#
# Both kernels compute in float32 and round once. Written in bfloat16,
# XLA's CPU backend rounds after every op, and the kernels took twice
# (forward) and 2.5 times (backward) as long as the same kernels on
# float32 data; converted on load and store they come close to the
# float32 time (an S1 activation of coatnet-0 at batch 16, AVX512_BF16:
# forward 16.0 -> 9.3 ms, backward 34.5 -> 17.4 ms; 7.2 and 14.5 ms on
# float32 data).
@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _gelu_forward(x: tf.Tensor) -> tf.Tensor:
    v = tf.cast(x, tf.float32)
    return tf.cast(v * (0.5 + 0.5 * tf.math.erf(v * layers.SQRT_HALF)), x.dtype)


def _slope(v: tf.Tensor) -> tf.Tensor:
    # d/dx x Phi(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    u = v * layers.SQRT_HALF
    cdf = 0.5 + 0.5 * tf.math.erf(u)
    return cdf + v * tf.exp(-tf.square(u)) * _INV_SQRT_2PI


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _gelu_backward(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    slope = _slope(tf.cast(x, tf.float32))
    return tf.cast(tf.cast(dy, tf.float32) * slope, dy.dtype)


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _gelu_slope(x: tf.Tensor) -> tf.Tensor:
    return _slope(tf.cast(x, tf.float32))


# In bfloat16 the kernels above are bound by erf and exp in float32, not
# by memory: on an S1 activation (AMD EPYC with AVX512_BF16) the forward
# took 6.5 ms where a pass converting on load and store takes 3.7, and
# the backward 11.5. A 16-bit float has 65,536 values, so the forward's
# result and the backward's float32 slope of every one of them are two
# tables (128 and 256 KB, held in the cores' L2 caches), built once by
# the kernels above, and the kernels become lookups by the input's bits:
# 4.4 and 5.2 ms, the same bits as before. float32 keeps the formula.
_TABLE_DTYPES = (tf.bfloat16, tf.float16)
_tables: dict[tf.DType, tuple[np.ndarray, np.ndarray]] = {}


def gelu_tables(dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    """GELU and its float32 slope of every value of a 16-bit float dtype.

    Built by the float32 training kernels on first use and kept for the
    process; in a graph without an eager context to build them in, they
    are computed in the graph.

    Args:
      dtype: tf.bfloat16 or tf.float16.

    Returns:
      (values [65536] in dtype, slopes [65536] float32), indexed by the
      input's bits read as an unsigned integer.

    Raises:
      ValueError: for another dtype.
    """
    if dtype not in _TABLE_DTYPES:
        raise ValueError(f"GELU tables are for 16-bit floats, not {dtype}.")
    if dtype not in _tables:
        with tf.init_scope():
            if tf.executing_eagerly():
                _tables[dtype] = tuple(
                    t.numpy() for t in _compute_tables(dtype)
                )
    if dtype not in _tables:
        return _compute_tables(dtype)
    return tuple(tf.constant(t) for t in _tables[dtype])


def _compute_tables(dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    every = tf.bitcast(tf.constant(np.arange(2**16, dtype=np.uint16)), dtype)
    return _gelu_forward(every), _gelu_slope(every)


def _bits(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.bitcast(x, tf.uint16), tf.int32)


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _gelu_forward_lookup(x: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    return tf.gather(values, _bits(x))


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _gelu_backward_lookup(
    x: tf.Tensor, dy: tf.Tensor, slopes: tf.Tensor
) -> tf.Tensor:
    slope = tf.gather(slopes, _bits(x))
    return tf.cast(tf.cast(dy, tf.float32) * slope, dy.dtype)


@tf.custom_gradient
def _gelu_exact_for_training(x: tf.Tensor) -> tf.Tensor:
    # Keeps only x for the backward pass, which recomputes (or looks up)
    # the slope inside its fused kernel instead of reading a stored copy.
    if x.dtype in _TABLE_DTYPES:
        values, slopes = gelu_tables(x.dtype)

        def lookup_grad(dy):
            return _gelu_backward_lookup(x, dy, slopes)

        return _gelu_forward_lookup(x, values), lookup_grad

    def grad(dy):
        return _gelu_backward(x, dy)

    return _gelu_forward(x), grad


def gelu(x: tf.Tensor, approximate: bool, training=False) -> tf.Tensor:
    """GELU of the fused layers: in training, the exact form as two
    XLA-fused kernels with a hand-written gradient (lookups by the
    input's bits for 16-bit floats).

    Args:
      x: input of any float dtype.
      approximate: use the tanh approximation (`layers.gelu`).
      training: use the fused kernels (exact form only). Inference keeps
        the plain formula, which oneDNN fuses into a preceding matmul.

    Returns:
      x * Phi(x), same shape and dtype.
    """
    if training and not approximate:
        return _gelu_exact_for_training(x)
    return layers.gelu(x, approximate)


# The width of `gelu_pass`'s identity matmul: 16 floats, one AVX-512
# register row. On an AMD EPYC with AVX512_BF16, 16 beat 8 (3x slower:
# too short a row), 32 and 64 at every map size of coatnet-0.
_GELU_PASS_WIDTH = 16


def gelu_pass(x: tf.Tensor, shift: tf.Tensor, approximate: bool = False):
    """gelu(x + shift) as one oneDNN pass, for inference.

    GELU after a conv (depthwise, the stem) has no fused kernel in
    TensorFlow's CPU runtime outside XLA: written plainly it is five
    element-wise passes, Eigen's, which for bfloat16 convert element by
    element. oneDNN applies GELU as the epilogue of a matmul, so the
    tensor is read as rows of 16 and multiplied by the 16 x 16 identity,
    which TensorFlow's graph optimizer fuses with the bias add and GELU
    that follow into one `_FusedMatMul`: one read and one write of the
    map. The bias add carries `shift`, a scalar computed at run time: a
    constant bias of zeros would be folded away, and the fusion with it.
    The identity costs 32 flops per element, under 1% of coatnet-0's
    forward, and is exact: each output is one input times 1 plus zeros,
    accumulated in float32.

    Measured on coatnet-0's maps at batch 16 against the plain formula
    with 1 / sqrt(2) folded into the conv (three passes, bfloat16 in
    float32 between two casts), on an AMD EPYC with AVX512_BF16: S1 [16,
    56, 56, 384] 11.3 -> 8.8 ms in float32 and 13.3 -> 9.3 ms in
    bfloat16; S2 5.3 -> 4.7 and 9.0 -> 4.6; the stem's 6.3 -> 5.7 and
    12.7 -> 7.0.

    Args:
      x: input of any float dtype whose per-example size (all axes but
        the first) is static; other shapes take `layers.gelu`.
      shift: a scalar of x's dtype, added before the GELU; callers move
        part of a preceding bias here (zero would do, but see above).
      approximate: the tanh approximation (also fused by oneDNN).

    Returns:
      gelu(x + shift), same shape and dtype as x.
    """
    width = _GELU_PASS_WIDTH
    size = x.shape[1:]
    if not size.is_fully_defined() or size.num_elements() % width:
        return layers.gelu(x + shift, approximate)
    rows = tf.matmul(tf.reshape(x, [-1, width]), tf.eye(width, dtype=x.dtype))
    rows = tf.nn.bias_add(rows, tf.fill([width], shift))
    y = tf.reshape(layers.gelu(rows, approximate), tf.shape(x))
    y.set_shape(x.shape)
    return y
