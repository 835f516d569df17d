"""2D relative attention: bias index, lookup, resize and layer (Eq. 3).

Eq. 3 adds a scalar w_{i-j} per head to the attention logit of query i and
key j, before the softmax. On an H x W token grid the offsets i - j take
(2H - 1) x (2W - 1) values, so each head owns a trainable table P of that
shape, and the bias of query (r_i, c_i) and key (r_j, c_j) is

    P[r_i - r_j + H - 1, c_i - c_j + W - 1]            (0-based)

Flattening the table row-major gives the index of `relative_position_index`.
For a new resolution the paper "simply use[s] bi-linear interpolation" of P
(App. A.1): `resize_relative_position_bias`. `RelativeAttention` is the
multi-head self-attention layer that owns a table.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from coatnet_tf.layers import DENSE_INIT, build_sublayers

_register = tf_keras.saving.register_keras_serializable(package="coatnet")


@functools.lru_cache(maxsize=64)
def _cached_index(height: int, width: int) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # Row-major positions.
    d_rows = rows[:, None] - rows[None, :] + height - 1  # [HW, HW], query i.
    d_cols = cols[:, None] - cols[None, :] + width - 1
    index = (d_rows * (2 * width - 1) + d_cols).astype(np.int32)
    index.setflags(write=False)  # Shared by every caller through the cache.
    return index


def relative_position_index(height: int, width: int) -> np.ndarray:
    """Flat table index of every (query, key) pair on a token grid.

    Args:
      height: grid rows H.
      width: grid columns W.

    Returns:
      int32 numpy array [H*W, H*W]; entry (i, j), i the query and j the key
      in row-major order, is (r_i - r_j + H - 1) * (2W - 1)
      + (c_i - c_j + W - 1). The array is read-only (cached).

    Raises:
      ValueError: a non-positive side.
    """
    if height < 1 or width < 1:
        raise ValueError(f"Invalid grid {height}x{width}.")
    return _cached_index(int(height), int(width))


def relative_position_bias(table: tf.Tensor, index: np.ndarray) -> tf.Tensor:
    """Looks up the per-head bias of every (query, key) pair.

    A gather, differentiable in `table` (its gradient is a scatter-add), so
    the table trains; callers run it in `call()`, never once in `build()`.

    Args:
      table: [heads, 2H - 1, 2W - 1].
      index: `relative_position_index(H, W)`.

    Returns:
      [heads, H*W, H*W], same dtype as `table`.
    """
    heads, n = table.shape[0], index.shape[0]
    # Gathers whole rows of the transposed table ([entries, heads]), then
    # moves heads first: 2x faster on CPU than a gather along axis 1 for
    # S3 of coatnet-0, forward and backward (a segment sum over rows).
    rows = tf.transpose(tf.reshape(table, [heads, -1]))
    bias = tf.gather(rows, tf.reshape(index, [-1]))  # [N * N, heads]
    return tf.transpose(tf.reshape(bias, [n, n, heads]), [2, 0, 1])


def grid_size(table_shape) -> tuple[int, int]:
    """Token grid (h, w) a bias table of shape [heads, 2h-1, 2w-1] serves.

    The one place the grid is derived from a table shape (checkpoint
    restore, resizing, reports). Exact integer arithmetic: (rows + 1) // 2
    on odd sizes, never a floor of a float resolution ratio.

    Args:
      table_shape: a shape [heads, rows, cols] (list, tuple or TensorShape).

    Returns:
      (h, w).

    Raises:
      ValueError: the shape is not [heads, odd, odd].
    """
    shape = [int(d) for d in table_shape]
    if len(shape) != 3 or shape[1] % 2 != 1 or shape[2] % 2 != 1:
        raise ValueError(
            f"A relative bias table is [heads, 2h-1, 2w-1], got {shape}."
        )
    return (shape[1] + 1) // 2, (shape[2] + 1) // 2


def resize_relative_position_bias(table, height: int, width: int):
    """Resizes a bias table for a height x width token grid (App. A.1).

    Bilinear interpolation with half-pixel centres (`tf.image.resize`
    defaults, no antialiasing), each head on its own. Because both sizes are
    odd, the zero offset stays exactly on the centre.

    Args:
      table: [heads, 2h - 1, 2w - 1] numpy array or tensor.
      height: target grid rows H.
      width: target grid columns W.

    Returns:
      `table` itself when it already has the target size; otherwise a
      [heads, 2H - 1, 2W - 1] tensor of the table's dtype.

    Raises:
      ValueError: `table` is not [heads, odd, odd] or the target is empty.
    """
    grid_size(np.shape(table))  # Validates the shape.
    if height < 1 or width < 1:
        raise ValueError(f"Invalid target grid {height}x{width}.")
    target = (2 * height - 1, 2 * width - 1)
    if tuple(np.shape(table)[1:]) == target:
        return table
    table = tf.convert_to_tensor(table)
    # Heads act as the batch axis with one channel: [heads, rows, cols, 1].
    resized = tf.image.resize(
        tf.cast(table[..., None], tf.float32),
        target,
        method=tf.image.ResizeMethod.BILINEAR,
        antialias=False,
    )
    return tf.cast(resized[..., 0], table.dtype)


def bias_table_init() -> tf_keras.initializers.Initializer:
    """Initializer of a relative bias table.

    Open choice: a small truncated normal rather than zeros, so heads differ
    from the first step. A new instance per table (see `conv_init`).

    Returns:
      `TruncatedNormal(stddev=0.02)`.
    """
    return tf_keras.initializers.TruncatedNormal(stddev=0.02)


@_register
class RelativeAttention(tf_keras.layers.Layer):
    """Multi-head self-attention with a 2D relative bias (Eq. 3, App. A.1).

    logits = q k^T / sqrt(head_size) + P[index], softmax over keys, where P
    is a trainable [heads, 2H - 1, 2W - 1] table per layer (not shared) and
    `index` the constant `relative_position_index(H, W)`. The lookup runs in
    every call, so gradients reach P. Logits, bias and softmax are float32
    under mixed precision.

    Args:
      hidden_size: output channels; heads = hidden_size // head_size. The
        q, k, v projections map the input channels to hidden_size, so the
        first block of a stage attends at its output width.
      head_size: channels per head.
      grid_size: (H, W) token grid the layer attends over.
      **kwargs: base `Layer` arguments.
    """

    # The projections' class; `coatnet_tf.kernels` swaps in its own.
    dense_class = tf_keras.layers.Dense

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        grid_size: Sequence[int],
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % head_size:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of "
                f"head_size {head_size}."
            )
        self.hidden_size = hidden_size
        self.head_size = head_size
        self.grid_size = tuple(int(s) for s in grid_size)
        self.num_heads = hidden_size // head_size
        # One matmul for q, k and v: [C_in, 3 * hidden] (same parameters as
        # three projections).
        self.qkv = self.dense_class(
            3 * hidden_size, kernel_initializer=DENSE_INIT, name="qkv"
        )
        self.out_proj = self.dense_class(
            hidden_size, kernel_initializer=DENSE_INIT, name="out_proj"
        )
        self.relative_position_bias = None
        self.index = relative_position_index(*self.grid_size)

    def build(self, input_shape):
        h, w = self.grid_size
        # float32 even under mixed precision: it is added to float32 logits.
        self.relative_position_bias = self.add_weight(
            "relative_position_bias",
            shape=[self.num_heads, 2 * h - 1, 2 * w - 1],
            initializer=bias_table_init(),
            trainable=True,
            experimental_autocast=False,
        )
        build_sublayers(
            [
                (self.qkv, [None, input_shape[-1]]),
                (self.out_proj, [None, self.hidden_size]),
            ]
        )
        super().build(input_shape)

    def bias(self) -> tf.Tensor:
        """The relative bias of every (query, key) pair: [heads, N, N]."""
        return relative_position_bias(self.relative_position_bias, self.index)

    def call(self, inputs, training=None):
        h, w = self.grid_size
        if tuple(inputs.shape[1:3]) != (h, w):
            raise ValueError(
                f"{self.name} attends over a {h}x{w} grid (its bias table "
                f"shape), got input {inputs.shape}."
            )
        q, k, v = self.project_heads(inputs, training)
        out = self.attend(q, k, v, training)
        out = self.out_proj(self.merge_heads(out, training))
        return tf.reshape(out, [-1, h, w, self.hidden_size])

    def project_heads(self, inputs, training=None):
        """q / sqrt(head_size), k and v of every head: [B, heads, N, d].

        Args:
          inputs: [B, H, W, C_in].
          training: unused here (the same map in training and inference);
            subclasses may choose a faster path by it.

        Returns:
          (q, k, v), each [B, heads, H * W, head_size].
        """
        del training
        n = inputs.shape[1] * inputs.shape[2]
        heads, d = self.num_heads, self.head_size
        x = tf.reshape(inputs, [-1, inputs.shape[-1]])  # [B*N, C_in]
        qkv = tf.reshape(self.qkv(x), [-1, n, 3, heads, d])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, B, heads, N, d]
        # unstack, not qkv[i]: its gradient is one stack, where three
        # slices would each scatter into a zero tensor of the full size.
        q, k, v = tf.unstack(qkv, 3)
        return q * tf.cast(d**-0.5, q.dtype), k, v

    def attend(self, q, k, v, training=None):
        """softmax(q k^T + bias) v over the keys, per head.

        Args:
          q: [B, heads, N, d], already scaled by 1 / sqrt(d).
          k: [B, heads, N, d].
          v: [B, heads, N, d].
          training: unused here; subclasses may choose a path by it.

        Returns:
          [B, heads, N, d], in v's dtype.
        """
        del training
        logits = tf.matmul(q, k, transpose_b=True)  # [B, heads, N, N]
        logits = tf.cast(logits, tf.float32) + self.bias()
        probs = tf.cast(tf.nn.softmax(logits, axis=-1), v.dtype)
        return tf.matmul(probs, v)

    def merge_heads(self, out, training=None):
        """The heads' outputs side by side, per token.

        Args:
          out: `attend`'s output, [B, heads, N, d].
          training: unused here; subclasses may choose a path by it.

        Returns:
          [B N, hidden_size].
        """
        del training
        out = tf.transpose(out, [0, 2, 1, 3])  # [B, N, heads, d]
        return tf.reshape(out, [-1, self.hidden_size])

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "head_size": self.head_size,
            "grid_size": list(self.grid_size),
        }
