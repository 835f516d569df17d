"""Convolutional layers of CoAtNet: stem (S0), MBConv (S1, S2), head.

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

from coatnet_tf import ops

_register = tf_keras.saving.register_keras_serializable(package="coatnet")


@_register
class StochasticDepth(tf_keras.layers.Layer):
    """Drops a residual branch per example (Huang et al., 2016).

    In training, each example's branch is zeroed with probability `rate` and
    otherwise scaled by 1 / (1 - rate), so inference needs no rescaling.

    Args:
      rate: drop probability in [0, 1).
      **kwargs: base `Layer` arguments.
    """

    def __init__(self, rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Stochastic depth rate {rate} not in [0, 1).")
        self.rate = float(rate)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        # One draw per example: [B, 1, ..., 1] broadcasts over the rest.
        shape = [tf.shape(inputs)[0]] + [1] * (inputs.shape.rank - 1)
        mask = tf.floor(keep + tf.random.uniform(shape, dtype=inputs.dtype))
        return inputs * (mask / tf.cast(keep, inputs.dtype))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


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
        self.conv0 = ops.Conv3x3(
            width,
            strides=2,
            kernel_initializer=ops.conv_init(),
            name="conv0",
        )
        self.norm0 = tf_keras.layers.BatchNormalization(
            momentum=bn_momentum,
            epsilon=bn_epsilon,
            synchronized=sync_batch_norm,
            name="norm0",
        )
        self.conv1 = ops.Conv3x3(
            width, kernel_initializer=ops.conv_init(), name="conv1"
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        # Built here: inference folds norm0 into conv0 and calls neither
        # conv0, norm0 nor conv1.
        inner = input_shape[:-1].concatenate([self.width])
        for layer, shape in (
            (self.conv0, input_shape),
            (self.norm0, inner),
            (self.conv1, inner),
        ):
            with tf.name_scope(layer.name):
                layer.build(shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if training or self.gelu_approximate:
            x = self.norm0(self.conv0(inputs), training=training)
            return self.conv1(ops.gelu(x, self.gelu_approximate, training))
        # Inference. Moving statistics make norm0 affine: fold it into
        # conv0, scaled by c = 1 / sqrt(2) for `ops.sqrt2_gelu_of_scaled`;
        # the last c goes into conv1's kernel.
        dtype = inputs.dtype
        scale, shift = ops.batch_norm_affine(self.norm0, dtype)
        c = tf.cast(ops.SQRT_HALF, dtype)
        u = tf.nn.conv2d(
            inputs, self.conv0.kernel * (scale * c), strides=2, padding="SAME"
        )
        u = tf.nn.bias_add(u, (self.conv0.bias * scale + shift) * c)
        x = tf.nn.conv2d(
            ops.sqrt2_gelu_of_scaled(u),
            self.conv1.kernel * c,
            strides=1,
            padding="SAME",
        )
        return tf.nn.bias_add(x, self.conv1.bias)

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
            bottleneck, kernel_initializer=ops.DENSE_INIT, name="reduce"
        )
        self.expand = None

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.expand = tf_keras.layers.Dense(
            channels, kernel_initializer=ops.DENSE_INIT, name="expand"
        )
        # Built here: MBConv may call `gate` without calling the layer.
        for layer, width in (
            (self.reduce, channels),
            (self.expand, self.bottleneck),
        ):
            with tf.name_scope(layer.name):
                layer.build([None, width])
        super().build(input_shape)

    def gate(self, inputs: tf.Tensor, scale: float = 1.0) -> tf.Tensor:
        """The sigmoid channel gate [B, C] of a map [B, H, W, C].

        Args:
          inputs: the feature map.
          scale: a constant factor of `inputs`, applied to their mean
            (`MBConvBlock` passes a map without its GELU's 1 / sqrt(2)).

        Returns:
          [B, C], in the dtype of `inputs`.
        """
        squeezed = tf.reduce_mean(inputs, axis=[1, 2])  # [B, C]
        if scale != 1.0:
            squeezed = squeezed * tf.cast(scale, squeezed.dtype)
        hidden = ops.gelu(self.reduce(squeezed), self.gelu_approximate)
        return tf.sigmoid(self.expand(hidden))

    def call(self, inputs):
        return inputs * self.gate(inputs)[:, None, None, :]

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

        def norm(name):
            return tf_keras.layers.BatchNormalization(
                momentum=bn_momentum,
                epsilon=bn_epsilon,
                synchronized=sync_batch_norm,
                name=name,
            )

        inner = width * expansion
        self.pre_norm = norm("pre_norm")
        # 1x1 convs run as matmuls (ops.conv1x1): same variables.
        self.expand_conv = ops.Conv1x1(
            inner,
            strides=stride,
            use_bias=False,  # A BatchNorm follows.
            kernel_initializer=ops.conv_init(),
            name="expand_conv",
        )
        self.expand_norm = norm("expand_norm")
        self.depthwise_conv = tf_keras.layers.DepthwiseConv2D(
            3,
            padding="same",
            use_bias=False,
            depthwise_initializer=ops.conv_init(),
            name="depthwise_conv",
        )
        self.depthwise_norm = norm("depthwise_norm")
        squeeze = int(width * se_ratio)
        self.se = (
            SqueezeExcitation(squeeze, gelu_approximate, name="se")
            if squeeze
            else None
        )
        self.project_conv = ops.Conv1x1(
            width, kernel_initializer=ops.conv_init(), name="project_conv"
        )
        self.drop_path = StochasticDepth(drop_path_rate, name="drop_path")
        self.shortcut_proj = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if int(input_shape[-1]) != self.width:
            self.shortcut_proj = ops.Conv1x1(
                self.width,
                kernel_initializer=ops.conv_init(),
                name="shortcut_proj",
            )
        # Every sublayer is built here, because inference may skip calling
        # some of them (`_folded_inference`).
        inner = input_shape[:-1].concatenate([self.width * self.expansion])
        for layer, shape in (
            (self.pre_norm, input_shape),
            (self.expand_conv, input_shape),
            (self.expand_norm, inner),
            (self.depthwise_conv, inner),
            (self.depthwise_norm, inner),
            (self.se, inner),
            (self.project_conv, inner),
        ):
            if layer is not None:
                with tf.name_scope(layer.name):
                    layer.build(shape)
        super().build(input_shape)

    def _folded_inference(self, inputs):
        """The residual branch at inference, BatchNorms folded.

        With moving statistics a BatchNorm is a per-channel affine map, so
        pre_norm and expand_norm fold into the 1x1 expansion, which then
        runs as one matmul + bias + GELU (a single fused oneDNN op), and
        depthwise_norm folds into the depthwise kernel plus a bias.

        The depthwise GELU has no fused kernel: the depthwise kernel and
        bias are scaled for `ops.sqrt2_gelu_of_scaled` (three passes over
        S1's and S2's largest maps instead of five), and the remaining
        1 / sqrt(2) folds into the SE mean and the projection kernel.
        """
        dtype = inputs.dtype
        scale1, shift1 = ops.batch_norm_affine(self.pre_norm, dtype)
        scale2, shift2 = ops.batch_norm_affine(self.expand_norm, dtype)
        scale3, shift3 = ops.batch_norm_affine(self.depthwise_norm, dtype)
        kernel = self.expand_conv.matrix()  # [C_in, C_inner]
        # BN2(W^T (s1 x + t1)) = (s1 W s2)^T x + (t1 W) s2 + t2.
        folded = scale1[:, None] * kernel * scale2
        bias = tf.linalg.matvec(kernel, shift1, transpose_a=True)
        bias = bias * scale2 + shift2
        x = self.expand_conv.sampled(inputs)
        shape = tf.shape(x)
        x = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), folded)
        x = ops.gelu(tf.nn.bias_add(x, bias), self.gelu_approximate)
        x = tf.reshape(x, tf.concat([shape[:3], [kernel.shape[1]]], 0))
        depthwise = self.depthwise_conv.depthwise_kernel * scale3[:, None]
        if self.gelu_approximate:
            x = tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME")
            x = ops.gelu(tf.nn.bias_add(x, shift3), approximate=True)
            factor = 1.0
        else:
            factor = ops.SQRT_HALF
            c = tf.cast(factor, dtype)
            u = tf.nn.depthwise_conv2d(x, depthwise * c, [1, 1, 1, 1], "SAME")
            u = tf.nn.bias_add(u, shift3 * c)
            x = ops.sqrt2_gelu_of_scaled(u)
        return self._project(x, factor)

    def _expand_stats_from_input(self) -> bool:
        """Whether training takes expand_norm's statistics from its input.

        `ops.batch_normalized_pixel_matmul` saves memory passes on CPUs and
        GPUs. Not with synchronized BatchNorm (its statistics are
        all-reduced by the layer), nor on TPUs, where XLA fuses the
        BatchNorm into the conv and the covariance matmul would only add
        FLOPs, nor for a frozen expand_norm, which Keras runs on its moving
        statistics.
        """
        strategy = tf.distribute.get_strategy()
        return (
            not self.sync_batch_norm
            and self.expand_norm.trainable
            and not isinstance(strategy, tf.distribute.TPUStrategy)
        )

    def _normalized_expansion(self, x):
        """expand_norm(expand_conv(x)) in training, statistics from x.

        The same values, gradients and moving-average updates as the two
        layers.
        """
        norm = self.expand_norm
        x = self.expand_conv.sampled(x)
        y, mean, variance = ops.batch_normalized_pixel_matmul(
            x, self.expand_conv.matrix(), norm.gamma, norm.beta, norm.epsilon
        )
        # The layer's own update; it leaves the averages for an empty batch
        # (a replica's share of a short last batch), whose statistics are
        # NaN.
        for average, value in (
            (norm.moving_mean, mean),
            (norm.moving_variance, variance),
        ):
            norm._assign_moving_average(
                average, value, norm.momentum, tf.size(x)
            )
        return y

    def _project(self, x, factor: float = 1.0):
        """SE and the projection of `factor * x` (SE gate in the kernel)."""
        kernel = tf.cast(self.project_conv.matrix(), x.dtype)
        if factor != 1.0:
            kernel = kernel * tf.cast(factor, x.dtype)
        if self.se is None:
            y = ops.pixel_matmul(x, kernel)
        else:
            gate = self.se.gate(x, factor)
            y = ops.gated_pixel_matmul(x, gate, kernel)
        return tf.nn.bias_add(y, tf.cast(self.project_conv.bias, x.dtype))

    def call(self, inputs, training=None):
        shortcut = inputs
        if self.stride == 2:
            shortcut = ops.max_pool_2x2(shortcut)
        if self.shortcut_proj is not None:
            shortcut = self.shortcut_proj(shortcut)

        if not training:
            return shortcut + self._folded_inference(inputs)

        x = self.pre_norm(inputs, training=training)
        if self._expand_stats_from_input():
            x = self._normalized_expansion(x)
        else:
            x = self.expand_norm(self.expand_conv(x), training=training)
        x = ops.gelu(x, self.gelu_approximate, training)
        x = self.depthwise_conv(x)
        x = self.depthwise_norm(x, training=training)
        x = ops.gelu(x, self.gelu_approximate, training)
        x = self._project(x)
        return shortcut + self.drop_path(x, training=training)

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
                kernel_initializer=ops.DENSE_INIT,
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
