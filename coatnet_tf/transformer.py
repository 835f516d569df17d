"""Transformer layers of CoAtNet (S3, S4): FFN and the block (Eq. 4).

Blocks take and return NHWC maps [B, H, W, C] so stages and multi-scale
features keep one layout; inside, tokens are flattened row-major to
[B * H * W, C] so every projection is one 2D matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras

from coatnet_tf.layers import DENSE_INIT, gelu, max_pool_2x2
from coatnet_tf.noise import StochasticDepth
from coatnet_tf.relative_position import RelativeAttention

_register = tf_keras.saving.register_keras_serializable(package="coatnet")


@_register
class FeedForward(tf_keras.layers.Layer):
    """Position-wise FFN: dense(expansion * C) -> GELU -> dense(C) (Fig. 4).

    Args:
      hidden_size: input and output channels.
      expansion: inner width = expansion * hidden_size.
      gelu_approximate: tanh-approximate GELU.
      **kwargs: base `Layer` arguments.
    """

    # The dense layers' class; `coatnet_tf.kernels` swaps in its own.
    dense_class = tf_keras.layers.Dense

    def __init__(
        self,
        hidden_size: int,
        expansion: int = 4,
        gelu_approximate: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.expansion = expansion
        self.gelu_approximate = gelu_approximate
        self.expand = self.dense_class(
            expansion * hidden_size,
            kernel_initializer=DENSE_INIT,
            name="expand",
        )
        self.shrink = self.dense_class(
            hidden_size, kernel_initializer=DENSE_INIT, name="shrink"
        )

    def activation(self, x: tf.Tensor, training=None) -> tf.Tensor:
        """The GELU between the two dense layers."""
        del training  # The same function in training and inference.
        return gelu(x, self.gelu_approximate)

    def call(self, inputs, training=None):
        shape = tf.shape(inputs)
        x = tf.reshape(inputs, [-1, inputs.shape[-1]])  # 2D for one matmul.
        x = self.shrink(self.activation(self.expand(x), training))
        x = tf.reshape(x, tf.concat([shape[:-1], [self.hidden_size]], 0))
        x.set_shape(inputs.shape[:-1].concatenate([self.hidden_size]))
        return x

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "expansion": self.expansion,
            "gelu_approximate": self.gelu_approximate,
        }


@_register
class TransformerBlock(tf_keras.layers.Layer):
    """Pre-norm Transformer block with relative attention (S3, S4).

    x <- Proj(Pool(x)) + Attention(Pool(LN(x)))          (Eq. 4)
    x <- x + FFN(LN(x))

    Pool is a 2x2 max pool of stride 2 on both branches when `stride` is 2
    (Funnel-Transformer style, App. A.1); Proj is a dense layer, present
    only when the channel count changes. With stride 1 and equal channels
    this is the plain block x <- x + Attention(LN(x)).

    Args:
      hidden_size: output channels.
      head_size: channels per attention head.
      grid_size: (H, W) token grid after pooling, i.e. the output grid.
      stride: 1 or 2.
      ffn_expansion: FFN inner width relative to hidden_size.
      drop_path_rate: stochastic depth rate of both residual branches.
      gelu_approximate: tanh-approximate GELU.
      ln_epsilon: LayerNorm epsilon.
      block_index: the block's index in the model, which keys its
        stochastic-depth masks (`coatnet_tf.noise`).
      **kwargs: base `Layer` arguments.
    """

    # The sublayers' classes; `coatnet_tf.kernels` swaps in its own.
    feed_forward_class = FeedForward
    attention_class = RelativeAttention
    dense_class = tf_keras.layers.Dense
    norm_class = tf_keras.layers.LayerNormalization

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        grid_size: Sequence[int],
        stride: int = 1,
        ffn_expansion: int = 4,
        drop_path_rate: float = 0.0,
        gelu_approximate: bool = False,
        ln_epsilon: float = 1e-5,
        block_index: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if stride not in (1, 2):
            raise ValueError(f"Block stride must be 1 or 2, got {stride}.")
        self.hidden_size = hidden_size
        self.head_size = head_size
        self.grid_size = tuple(int(s) for s in grid_size)
        self.stride = stride
        self.ffn_expansion = ffn_expansion
        self.drop_path_rate = drop_path_rate
        self.gelu_approximate = gelu_approximate
        self.ln_epsilon = ln_epsilon
        self.block_index = block_index
        self.attn_norm = self.norm_class(epsilon=ln_epsilon, name="attn_norm")
        self.attention = self.attention_class(
            hidden_size, head_size, self.grid_size, name="attention"
        )
        self.ffn_norm = self.norm_class(epsilon=ln_epsilon, name="ffn_norm")
        self.ffn = self.feed_forward_class(
            hidden_size, ffn_expansion, gelu_approximate, name="ffn"
        )
        self.drop_path = StochasticDepth(
            drop_path_rate, block_index, name="drop_path"
        )
        self.shortcut_proj = None

    def build(self, input_shape):
        if int(input_shape[-1]) != self.hidden_size:
            self.shortcut_proj = self.dense_class(
                self.hidden_size,
                kernel_initializer=DENSE_INIT,
                name="shortcut_proj",
            )
        super().build(input_shape)

    def call(self, inputs, training=None):
        shortcut, x = inputs, self.attn_norm(inputs)
        if self.stride == 2:
            shortcut, x = max_pool_2x2(shortcut), max_pool_2x2(x)
        if self.shortcut_proj is not None:
            shortcut = self.shortcut_proj(shortcut)
        x = self.attention(x, training=training)
        x = shortcut + self.drop_path(x, training=training)
        y = self.ffn(self.ffn_norm(x), training=training)
        # draw=1: the FFN branch's mask is independent of the attention's.
        return x + self.drop_path(y, training=training, draw=1)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "head_size": self.head_size,
            "grid_size": list(self.grid_size),
            "stride": self.stride,
            "ffn_expansion": self.ffn_expansion,
            "drop_path_rate": self.drop_path_rate,
            "gelu_approximate": self.gelu_approximate,
            "ln_epsilon": self.ln_epsilon,
            "block_index": self.block_index,
        }
