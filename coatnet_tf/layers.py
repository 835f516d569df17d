"""Convolutional layers of CoAtNet: stem (S0), MBConv (S1, S2), head.

The reference model: each layer is the paper's formula written plainly,
one forward path, for training and inference alike. The CPU-tuned
versions of the same layers (folded BatchNorms, matmul convolutions,
fused GELU) are subclasses in `coatnet_tf.kernels`, chosen by
`CoAtNetConfig.kernels`; they share these layers' variables.

All tensors are NHWC. Choices the paper leaves open (§3.2, App. A.1) are
made here and marked "Open choice":

- Stem: conv 3x3 stride 2 -> BatchNorm -> GELU -> conv 3x3. The second conv
  has no norm or activation because every block after it starts with its
  own pre-norm.
- MBConv: expansion and squeeze-excitation widths are taken from the
  block's output channels, and its shortcut pool is a 2x2 max pool, the
  pool of Eq. 4.
- Initializers: convolutions use a He-style fan-out truncated normal;
  dense layers Glorot uniform; the classifier kernel zero.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from coatnet_tf.noise import StochasticDepth

__all__ = [
    "DENSE_INIT",
    "ClassificationHead",
    "ConvStem",
    "MBConvBlock",
    "SqueezeExcitation",
    "StochasticDepth",
    "conv_init",
    "gelu",
    "max_pool_2x2",
]

_register = tf_keras.saving.register_keras_serializable(package="coatnet")

DENSE_INIT = "glorot_uniform"  # A name: each layer gets its own instance.
SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)


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


def gelu(x: tf.Tensor, approximate: bool) -> tf.Tensor:
    """GELU (App. A.1), exact erf form or its tanh approximation.

    Args:
      x: input of any float dtype.
      approximate: use the tanh approximation.

    Returns:
      x * Phi(x), same shape and dtype.
    """
    if approximate:
        return tf.nn.gelu(x, approximate=True)
    # 0.5 x (1 + erf(x / sqrt(2))). Written with erf because `tf.nn.gelu`
    # uses erfc, whose CPU kernel is ~2.5x slower than erf's.
    return 0.5 * x * (1.0 + tf.math.erf(x * SQRT_HALF))


def max_pool_2x2(x: tf.Tensor) -> tf.Tensor:
    """The stride-2 max pool of Eq. 4 and 5; odd sides round up."""
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")


def build_sublayers(pairs) -> None:
    """Builds each (layer, input shape) pair under the layer's name scope.

    Blocks build every sublayer in their own `build`, so that all kernel
    settings create the same variables with the same names even where a
    fast path reads a sublayer's weights without calling it.

    Args:
      pairs: (layer or None, shape) pairs; None entries are skipped.
    """
    for layer, shape in pairs:
        if layer is not None:
            with tf.name_scope(layer.name):
                layer.build(shape)


@_register
class ConvStem(tf_keras.layers.Layer):
    """S0: two 3x3 convolutions, the first with stride 2 (§3.2, Fig. 4).

    Open choice: BatchNorm and GELU between the two convs; both convs keep a
    bias so the parameter count matches the paper's.

    Args:
      width: output channels of both convs.
      gelu_approximate: tanh-approximate GELU.
      bn_momentum: BatchNorm momentum.
      bn_epsilon: BatchNorm epsilon.
      sync_batch_norm: all-reduce batch statistics over the replicas of
        a distribution strategy (small per-core batches on TPU pods).
      **kwargs: base `Layer` arguments.
    """

    def __init__(
        self,
        width: int,
        gelu_approximate: bool = False,
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        sync_batch_norm: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.width = width
        self.gelu_approximate = gelu_approximate
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_batch_norm = sync_batch_norm
        self.conv0 = tf_keras.layers.Conv2D(
            width,
            3,
            strides=2,
            padding="same",
            kernel_initializer=conv_init(),
            name="conv0",
        )
        self.norm0 = tf_keras.layers.BatchNormalization(
            momentum=bn_momentum,
            epsilon=bn_epsilon,
            synchronized=sync_batch_norm,
            name="norm0",
        )
        self.conv1 = tf_keras.layers.Conv2D(
            width,
            3,
            padding="same",
            kernel_initializer=conv_init(),
            name="conv1",
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        inner = input_shape[:-1].concatenate([self.width])
        build_sublayers(
            (
                (self.conv0, input_shape),
                (self.norm0, inner),
                (self.conv1, inner),
            )
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.norm0(self.conv0(inputs), training=training)
        return self.conv1(gelu(x, self.gelu_approximate))

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "gelu_approximate": self.gelu_approximate,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
        }


@_register
class SqueezeExcitation(tf_keras.layers.Layer):
    """Squeeze-excitation (Hu et al., 2018) on an NHWC feature map.

    Global average pool -> dense(bottleneck) -> GELU -> dense(channels) ->
    sigmoid gate. Dense layers act on [B, C], the same weights as 1x1 convs
    on the pooled map.

    Args:
      bottleneck: width of the squeeze layer.
      gelu_approximate: tanh-approximate GELU.
      **kwargs: base `Layer` arguments.
    """

    def __init__(self, bottleneck: int, gelu_approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.bottleneck = bottleneck
        self.gelu_approximate = gelu_approximate
        self.reduce = tf_keras.layers.Dense(
            bottleneck, kernel_initializer=DENSE_INIT, name="reduce"
        )
        self.expand = None

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.expand = tf_keras.layers.Dense(
            channels, kernel_initializer=DENSE_INIT, name="expand"
        )
        build_sublayers(
            (
                (self.reduce, [None, channels]),
                (self.expand, [None, self.bottleneck]),
            )
        )
        super().build(input_shape)

    def gate(self, squeezed: tf.Tensor) -> tf.Tensor:
        """The sigmoid channel gate [B, C] of the pooled map [B, C]."""
        hidden = gelu(self.reduce(squeezed), self.gelu_approximate)
        return tf.sigmoid(self.expand(hidden))

    def call(self, inputs):
        gate = self.gate(tf.reduce_mean(inputs, axis=[1, 2]))
        return inputs * gate[:, None, None, :]

    def get_config(self):
        return {
            **super().get_config(),
            "bottleneck": self.bottleneck,
            "gelu_approximate": self.gelu_approximate,
        }


@_register
class MBConvBlock(tf_keras.layers.Layer):
    """Pre-norm MBConv with squeeze-excitation (S1, S2; §3.2, Eq. 5).

    x <- Proj(Pool(x)) + Conv(SE(DepthConv(Conv(Norm(x), stride)))),
    with BatchNorm and GELU after the expansion conv and the depthwise conv.
    With stride 2 the stride sits on the first 1x1 conv (Eq. 5), not on the
    depthwise conv. Proj is a 1x1 conv, present only when the channel count
    changes; Pool is a 2x2 max pool (open choice, as in Eq. 4).

    Args:
      width: output channels.
      stride: 1 or 2.
      expansion: inner width = expansion * width.
      se_ratio: squeeze width = int(se_ratio * width); 0 disables SE.
      drop_path_rate: stochastic depth rate of the residual branch.
      gelu_approximate: tanh-approximate GELU.
      bn_momentum: BatchNorm momentum.
      bn_epsilon: BatchNorm epsilon.
      sync_batch_norm: all-reduce batch statistics over the replicas of
        a distribution strategy (small per-core batches on TPU pods).
      block_index: the block's index in the model, which keys its
        stochastic-depth masks (`coatnet_tf.noise`).
      **kwargs: base `Layer` arguments.
    """

    def __init__(
        self,
        width: int,
        stride: int = 1,
        expansion: int = 4,
        se_ratio: float = 0.25,
        drop_path_rate: float = 0.0,
        gelu_approximate: bool = False,
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        sync_batch_norm: bool = False,
        block_index: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}.")
        self.width = width
        self.stride = stride
        self.expansion = expansion
        self.se_ratio = se_ratio
        self.drop_path_rate = drop_path_rate
        self.gelu_approximate = gelu_approximate
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_batch_norm = sync_batch_norm
        self.block_index = block_index

        def norm(name):
            return tf_keras.layers.BatchNormalization(
                momentum=bn_momentum,
                epsilon=bn_epsilon,
                synchronized=sync_batch_norm,
                name=name,
            )

        inner = width * expansion
        self.pre_norm = norm("pre_norm")
        self.expand_conv = tf_keras.layers.Conv2D(
            inner,
            1,
            strides=stride,
            use_bias=False,  # A BatchNorm follows.
            kernel_initializer=conv_init(),
            name="expand_conv",
        )
        self.expand_norm = norm("expand_norm")
        self.depthwise_conv = tf_keras.layers.DepthwiseConv2D(
            3,
            padding="same",
            use_bias=False,
            depthwise_initializer=conv_init(),
            name="depthwise_conv",
        )
        self.depthwise_norm = norm("depthwise_norm")
        squeeze = int(width * se_ratio)
        self.se = (
            SqueezeExcitation(squeeze, gelu_approximate, name="se")
            if squeeze
            else None
        )
        self.project_conv = tf_keras.layers.Conv2D(
            width, 1, kernel_initializer=conv_init(), name="project_conv"
        )
        self.drop_path = StochasticDepth(
            drop_path_rate, block_index, name="drop_path"
        )
        self.shortcut_proj = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if int(input_shape[-1]) != self.width:
            self.shortcut_proj = tf_keras.layers.Conv2D(
                self.width,
                1,
                kernel_initializer=conv_init(),
                name="shortcut_proj",
            )
        inner = input_shape[:-1].concatenate([self.width * self.expansion])
        build_sublayers(
            (
                (self.pre_norm, input_shape),
                (self.expand_conv, input_shape),
                (self.expand_norm, inner),
                (self.depthwise_conv, inner),
                (self.depthwise_norm, inner),
                (self.se, inner),
                (self.project_conv, inner),
                (self.shortcut_proj, input_shape),
            )
        )
        super().build(input_shape)

    def shortcut(self, inputs: tf.Tensor) -> tf.Tensor:
        """Proj(Pool(x)) of Eq. 5: the identity when shapes agree."""
        if self.stride == 2:
            inputs = max_pool_2x2(inputs)
        if self.shortcut_proj is not None:
            inputs = self.shortcut_proj(inputs)
        return inputs

    def call(self, inputs, training=None):
        x = self.pre_norm(inputs, training=training)
        x = self.expand_norm(self.expand_conv(x), training=training)
        x = gelu(x, self.gelu_approximate)
        x = self.depthwise_norm(self.depthwise_conv(x), training=training)
        x = gelu(x, self.gelu_approximate)
        if self.se is not None:
            x = self.se(x)
        x = self.project_conv(x)
        return self.shortcut(inputs) + self.drop_path(x, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "stride": self.stride,
            "expansion": self.expansion,
            "se_ratio": self.se_ratio,
            "drop_path_rate": self.drop_path_rate,
            "gelu_approximate": self.gelu_approximate,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
            "block_index": self.block_index,
        }


@_register
class ClassificationHead(tf_keras.layers.Layer):
    """Global average pooling, pre-logits and classifier (App. A.1, §5).

    GAP -> LayerNorm -> [dense(pre_logits_size) -> tanh] -> dropout ->
    dense(num_classes). The final LayerNorm normalizes the output of the
    last pre-norm block. The classifier runs in float32 under mixed
    precision, so logits (and the loss on them) are float32. Its kernel
    starts at zero and its bias at `head_init_bias`.

    Args:
      num_classes: classifier width; 0 returns the features before it.
      pre_logits_size: width of the pre-logits layer; 0 disables it.
      dropout_rate: dropout before the classifier.
      head_init_bias: initial classifier bias.
      ln_epsilon: LayerNorm epsilon.
      **kwargs: base `Layer` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        pre_logits_size: int = 0,
        dropout_rate: float = 0.0,
        head_init_bias: float = 0.0,
        ln_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pre_logits_size = pre_logits_size
        self.dropout_rate = dropout_rate
        self.head_init_bias = head_init_bias
        self.ln_epsilon = ln_epsilon
        self.norm = tf_keras.layers.LayerNormalization(
            epsilon=ln_epsilon, name="norm"
        )
        self.pre_logits = None
        if pre_logits_size:
            self.pre_logits = tf_keras.layers.Dense(
                pre_logits_size,
                activation="tanh",
                kernel_initializer=DENSE_INIT,
                name="pre_logits",
            )
        self.dropout = tf_keras.layers.Dropout(dropout_rate, name="dropout")
        self.classifier = None
        if num_classes:
            self.classifier = tf_keras.layers.Dense(
                num_classes,
                kernel_initializer="zeros",
                bias_initializer=tf_keras.initializers.Constant(head_init_bias),
                dtype="float32",
                name="classifier",
            )

    def call(self, inputs, training=None):
        x = tf.reduce_mean(inputs, axis=[1, 2])  # [B, C]
        x = self.norm(x)
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        if self.classifier is None:
            return x
        return self.classifier(self.dropout(x, training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "pre_logits_size": self.pre_logits_size,
            "dropout_rate": self.dropout_rate,
            "head_init_bias": self.head_init_bias,
            "ln_epsilon": self.ln_epsilon,
        }
