"""The fused layers: the reference layers' CPU-tuned forward paths.

Each class here subclasses a reference layer (`coatnet_tf.layers`,
`coatnet_tf.transformer`) and overrides only how it computes: the same
sublayers, variables, names and config, so a checkpoint written with one
kernel setting loads into the other. `CoAtNetConfig.kernels = "fused"`
builds the model from these.

- `FusedConvStem`: its 3x3 convs with matmul-based gradients
  (`cpu_ops.conv3x3_stride2`, `cpu_ops.conv3x3_same`); at inference norm0
  folded into conv0 and the GELU one oneDNN pass (`gelu_ops.gelu_pass`).
- `FusedMBConvBlock`: 1x1 convs as matmuls over pixels, the
  squeeze-excitation gate folded into the projection kernel; in training
  expand_norm's statistics from the expansion's input
  (`cpu_ops.batch_normalized_pixel_matmul`) and GELU as XLA-fused kernels
  (`gelu_ops.gelu`);
  at inference all three BatchNorms folded, the depthwise GELU one
  oneDNN pass and the SE squeeze one oneDNN pool.
- `FusedFeedForward`, `FusedTransformerBlock`: the FFN's GELU as
  XLA-fused kernels in training, and every dense layer a `FusedDense`;
  at inference on a batch of unknown size (a served model's) the
  pre-norms are oneDNN's layer normalization (`FusedLayerNorm`).
- `FusedRelativeAttention`: at inference q, k and v projected per head
  without a transpose, heads major, the scale and relative bias in the
  logits' matmul, and for serving the per-head kernels and the bias
  computed once (`freeze_for_inference`); in training the attention
  with a hand-written gradient (`attention_ops`).
- In training every bias gradient over pixels or tokens is a matmul
  (`cpu_ops.bias_add`): TensorFlow's CPU kernel sums a bfloat16 one in
  bfloat16.

Every path is proven equal to the reference in values, gradients and
BatchNorm moving statistics by tests/coatnet_tf/kernels_test.py.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from coatnet_tf import layers, relative_position, transformer
from coatnet_tf.kernels import attention_ops, cpu_ops, gelu_ops

_register = tf_keras.saving.register_keras_serializable(package="coatnet")


def _kernel(conv) -> tf.Tensor:
    """A conv layer's kernel as a tensor in the compute dtype.

    Read inside the calling block's `call`, whose autocast scope casts it
    under mixed precision; `tf.custom_gradient` functions need a tensor.
    """
    return tf.convert_to_tensor(conv.kernel)


def _matrix(conv) -> tf.Tensor:
    """A 1x1 conv layer's kernel as a [C, O] matrix."""
    return cpu_ops.kernel_matrix(_kernel(conv))


def _conv1x1(conv, x: tf.Tensor, training=None) -> tf.Tensor:
    """`conv(x)` for a 1x1 `Conv2D`, as one matmul over pixels."""
    y = cpu_ops.conv1x1(x, _kernel(conv), conv.strides[0])
    if conv.use_bias:
        y = cpu_ops.bias_add(y, conv.bias, training)
    return y


def _sampled(conv, x: tf.Tensor) -> tf.Tensor:
    """The pixels a 1x1 conv reads: x, or x[:, ::2, ::2] at stride 2."""
    return cpu_ops.subsample_2x(x) if conv.strides[0] == 2 else x


def _bias_gelu(x: tf.Tensor, bias: tf.Tensor, approximate: bool):
    """gelu(x + bias) at inference, bias per channel, in two oneDNN ops.

    The bias joins the conv before it as a fused bias add, all but its
    mean, which goes to `gelu_ops.gelu_pass` as the shift its fusion needs.
    """
    shift = tf.reduce_mean(bias)
    return gelu_ops.gelu_pass(
        tf.nn.bias_add(x, bias - shift), shift, approximate
    )


@_register
class FusedConvStem(layers.ConvStem):
    """`ConvStem` with matmul-based conv gradients and folded inference.

    Args: those of `ConvStem`.
    """

    def call(self, inputs, training=None):
        if training:
            x = cpu_ops.conv3x3_stride2(inputs, _kernel(self.conv0))
            x = cpu_ops.bias_add(x, self.conv0.bias, training)
            x = self.norm0(x, training=training)
            x = gelu_ops.gelu(x, self.gelu_approximate, training)
            x = cpu_ops.conv3x3_same(x, _kernel(self.conv1))
            return cpu_ops.bias_add(x, self.conv1.bias, training)
        # Inference. Moving statistics make norm0 affine: fold it into
        # conv0, and run the GELU as one oneDNN pass.
        scale, shift = cpu_ops.batch_norm_affine(self.norm0, inputs.dtype)
        u = tf.nn.conv2d(
            inputs, self.conv0.kernel * scale, strides=2, padding="SAME"
        )
        x = _bias_gelu(
            u, self.conv0.bias * scale + shift, self.gelu_approximate
        )
        x = tf.nn.conv2d(x, self.conv1.kernel, strides=1, padding="SAME")
        return tf.nn.bias_add(x, self.conv1.bias)


@_register
class FusedMBConvBlock(layers.MBConvBlock):
    """`MBConvBlock` with matmul convs, fused training and folded inference.

    Args: those of `MBConvBlock`.
    """

    def shortcut(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        if self.stride == 2:
            inputs = layers.max_pool_2x2(inputs)
        if self.shortcut_proj is not None:
            inputs = _conv1x1(self.shortcut_proj, inputs, training)
        return inputs

    def call(self, inputs, training=None):
        if not training:
            return self.shortcut(inputs) + self._folded_inference(inputs)
        x = self.pre_norm(inputs, training=training)
        if self._expand_stats_from_input():
            x = self._normalized_expansion(x)
        else:
            x = _conv1x1(self.expand_conv, x, training)
            x = self.expand_norm(x, training=training)
        x = gelu_ops.gelu(x, self.gelu_approximate, training)
        x = self.depthwise_conv(x)
        x = self.depthwise_norm(x, training=training)
        x = gelu_ops.gelu(x, self.gelu_approximate, training)
        x = self._project(x, training=True)
        shortcut = self.shortcut(inputs, training=True)
        return shortcut + self.drop_path(x, training=training)

    def _folded_inference(self, inputs):
        """The residual branch at inference, BatchNorms folded.

        With moving statistics a BatchNorm is a per-channel affine map, so
        pre_norm and expand_norm fold into the 1x1 expansion, which then
        runs as one matmul + bias + GELU (a single fused oneDNN op), and
        depthwise_norm folds into the depthwise kernel plus a bias.

        The depthwise GELU has no fused kernel after the conv; it runs
        as one oneDNN pass (`gelu_ops.gelu_pass`).
        """
        dtype = inputs.dtype
        scale1, shift1 = cpu_ops.batch_norm_affine(self.pre_norm, dtype)
        scale2, shift2 = cpu_ops.batch_norm_affine(self.expand_norm, dtype)
        scale3, shift3 = cpu_ops.batch_norm_affine(self.depthwise_norm, dtype)
        kernel = _matrix(self.expand_conv)  # [C_in, C_inner]
        # BN2(W^T (s1 x + t1)) = (s1 W s2)^T x + (t1 W) s2 + t2.
        folded = scale1[:, None] * kernel * scale2
        bias = tf.linalg.matvec(kernel, shift1, transpose_a=True)
        bias = bias * scale2 + shift2
        x = _sampled(self.expand_conv, inputs)
        shape = tf.shape(x)
        x = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), folded)
        x = layers.gelu(tf.nn.bias_add(x, bias), self.gelu_approximate)
        x = tf.reshape(x, tf.concat([shape[:3], [kernel.shape[1]]], 0))
        depthwise = self.depthwise_conv.depthwise_kernel * scale3[:, None]
        x = tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME")
        x = _bias_gelu(x, shift3, self.gelu_approximate)
        return self._project(x, training=False)

    def _expand_stats_from_input(self) -> bool:
        """Whether training takes expand_norm's statistics from its input.

        Not with synchronized BatchNorm (the layer all-reduces its
        statistics), nor for a frozen expand_norm, which Keras runs on its
        moving statistics.
        """
        return not self.sync_batch_norm and self.expand_norm.trainable

    def _normalized_expansion(self, x):
        """expand_norm(expand_conv(x)) in training, statistics from x.

        The same values, gradients and moving-average updates as the two
        layers.
        """
        norm = self.expand_norm
        x = _sampled(self.expand_conv, x)
        y, mean, variance = cpu_ops.batch_normalized_pixel_matmul(
            x, _matrix(self.expand_conv), norm.gamma, norm.beta, norm.epsilon
        )
        cpu_ops.assign_moving_average(norm, mean, variance, tf.size(x))
        return y

    def _project(self, x, training: bool):
        """SE and the projection of x (the SE gate in the kernel).

        At inference the squeeze is one average pool
        (`cpu_ops.spatial_mean`).
        """
        kernel = tf.cast(_matrix(self.project_conv), x.dtype)
        if self.se is None:
            y = cpu_ops.pixel_matmul(x, kernel)
        else:
            if training:
                squeezed = tf.reduce_mean(x, axis=[1, 2])
            else:
                squeezed = cpu_ops.spatial_mean(x)  # [B, C]
            gate = self.se.gate(squeezed)
            y = cpu_ops.gated_pixel_matmul(x, gate, kernel)
        return cpu_ops.bias_add(y, self.project_conv.bias, training)


def _inference_copy(layer, weight, value, key: str) -> tf.Variable:
    """A frozen layer's non-trainable copy of what inference reads.

    Named `<the layer's variable scope>/inference/<key>`, the scope read
    from `weight`, one of the layer's own variables.
    """
    name = weight.name.split(":")[0]
    scope = name.rsplit("/", 1)[0] if "/" in name else layer.name
    return tf.Variable(value, trainable=False, name=f"{scope}/inference/{key}")


@_register
class FusedDense(tf_keras.layers.Dense):
    """`Dense` whose bias gradient in training is a matmul.

    `cpu_ops.bias_add`: summed in float32 where TensorFlow's kernel sums
    bfloat16 in bfloat16, at about the same speed.

    Args: those of `Dense`.
    """

    def call(self, inputs, training=None):
        if not training or not self.use_bias:
            return super().call(inputs)
        y = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), self.kernel)
        y = cpu_ops.bias_add(y, self.bias, training=True)
        if inputs.shape.rank != 2:
            shape = tf.concat([tf.shape(inputs)[:-1], [self.units]], 0)
            y = tf.reshape(y, shape)
            y.set_shape(inputs.shape[:-1].concatenate([self.units]))
        return self.activation(y)


def _refuse_training_if_frozen(layer, training) -> None:
    """Raises if a frozen layer (`layer._frozen` set) is called to train.

    Its inference copies would not follow the weights' updates.
    """
    if training and layer._frozen is not None:
        raise ValueError(
            f"{layer.name} was frozen for inference "
            "(freeze_for_inference); build a new model to train."
        )


@_register
class FusedLayerNorm(tf_keras.layers.LayerNormalization):
    """`LayerNormalization` over the last axis that, at inference on a
    batch of unknown size, runs as oneDNN's layer normalization
    (`cpu_ops.layer_norm`).

    A served model's batch is unknown when its graph is optimized, and
    there the fused kernel replaces tf_keras's five passes over the rows
    (seven under mixed_bfloat16, with two casts). With a static batch,
    or in training, this is tf_keras's layer: the fused form would not
    be rewritten there and is slower unfused. So is a norm over other
    axes, or one without gamma or beta.

    Args: those of `LayerNormalization`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._frozen = None
        self._fusable = False

    def build(self, input_shape):
        super().build(input_shape)
        # oneDNN's kernel normalizes the last axis and applies both gamma
        # and beta; the one test that `call` and the freeze both read.
        last = tf.TensorShape(input_shape).rank - 1
        self._fusable = self.axis == [last] and self.scale and self.center

    def freeze_for_inference(self) -> None:
        """Stores gamma and beta in the dtype the fused kernel reads them in.

        Under mixed_bfloat16 that is bfloat16, and a served call would
        otherwise cast both on every call. Copies in non-trainable
        variables, as `FusedRelativeAttention.freeze_for_inference`'s; a
        frozen layer refuses to train. A norm the fused kernel cannot
        take (another axis, no gamma or beta) has nothing to freeze.
        """
        if self._frozen is not None or not self._fusable:
            return
        dtype = tf.as_dtype(self.compute_dtype)
        self._frozen = [
            _inference_copy(self, weight, tf.cast(weight, dtype), key)
            for key, weight in (("gamma", self.gamma), ("beta", self.beta))
        ]

    def call(self, inputs, training=None):
        _refuse_training_if_frozen(self, training)
        if training or inputs.shape[0] is not None or not self._fusable:
            return super().call(inputs)
        gamma, beta = self._frozen or (self.gamma, self.beta)
        return cpu_ops.layer_norm(inputs, gamma, beta, self.epsilon)


@_register
class FusedRelativeAttention(relative_position.RelativeAttention):
    """`RelativeAttention` with `FusedDense` projections, at inference
    heads major with the scale and bias in the logits' matmul, and in
    training the attention's hand-written gradient (`attention_ops`).

    At inference q, k and v are projected per head straight into [heads,
    B, N, d] (`attention_ops.head_projections`), where the relative bias
    [heads, 1, N, N] joins the logits' matmul as its epilogue
    (`attention_ops.inference_attention`). That adds the bias in the
    compute dtype: under mixed_bfloat16, to bfloat16 logits, where the
    reference adds it to float32 ones (tests bound the difference).

    What inference derives from the weights alone (the qkv kernel laid
    out per head, the relative bias gathered from its table) can be
    computed once for a model whose weights no longer change
    (`freeze_for_inference`).

    Args: those of `RelativeAttention`.
    """

    dense_class = FusedDense

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._frozen = None

    def freeze_for_inference(self) -> None:
        """Stores what inference derives from the weights, computed once.

        Each inference call otherwise lays the qkv kernel out per head (a
        transpose of 3 C^2 values) and gathers the [heads, N, N] bias
        from its table: work that does not shrink with the batch, a
        quarter of the op time of coatnet-0's bfloat16 forward at batch
        1 in a profile (served, frozen runs 1.10x faster there). Here
        both are computed by the inference path's own functions and kept
        in non-trainable variables, which inference then reads: the same
        values, bit for bit. For serving: the copies do not follow later
        changes of the weights, so a frozen layer refuses to train.
        """
        if self._frozen is not None:
            return
        dtype = tf.as_dtype(self.compute_dtype)
        kernels, biases = self._head_weights(dtype)

        def stored(value, key):
            return _inference_copy(
                self, self.relative_position_bias, value, key
            )

        self._frozen = {
            "bias": stored(self._inference_bias(dtype), "bias"),
            "kernels": [
                stored(t, f"{n}_kernel") for n, t in zip("qkv", kernels)
            ],
            "biases": [stored(t, f"{n}_bias") for n, t in zip("qkv", biases)],
        }

    def _head_weights(self, dtype):
        """`attention_ops.head_weights` of the qkv layer, in `dtype`."""
        return attention_ops.head_weights(
            tf.cast(self.qkv.kernel, dtype),
            tf.cast(self.qkv.bias, dtype),
            self.num_heads,
        )

    def _inference_bias(self, dtype):
        """The relative bias as `inference_attention` adds it."""
        if self._frozen is not None:
            return tf.convert_to_tensor(self._frozen["bias"])
        return tf.cast(self.bias(), dtype)[:, None]

    def call(self, inputs, training=None):
        _refuse_training_if_frozen(self, training)
        return super().call(inputs, training)

    def project_heads(self, inputs, training=None):
        if training:
            return super().project_heads(inputs, training)
        if self._frozen is not None:
            kernels, biases = self._frozen["kernels"], self._frozen["biases"]
        else:
            kernels, biases = self._head_weights(inputs.dtype)
        return attention_ops.head_projections(inputs, kernels, biases)

    def attend(self, q, k, v, training=None):
        if training:
            return attention_ops.attention(q, k, v, self.bias())
        bias = self._inference_bias(q.dtype)
        scale = self.head_size**-0.5
        return attention_ops.inference_attention(q, k, v, bias, scale)

    def merge_heads(self, out, training=None):
        if training:
            return super().merge_heads(out, training)
        # [heads, B, N, d] -> [B, N, heads, d]
        out = tf.transpose(out, [1, 2, 0, 3])
        return tf.reshape(out, [-1, self.hidden_size])


@_register
class FusedFeedForward(transformer.FeedForward):
    """`FeedForward` with `FusedDense` layers and, in training, its GELU as
    XLA-fused kernels.

    Args: those of `FeedForward`.
    """

    dense_class = FusedDense

    def activation(self, x: tf.Tensor, training=None) -> tf.Tensor:
        return gelu_ops.gelu(x, self.gelu_approximate, training)


@_register
class FusedTransformerBlock(transformer.TransformerBlock):
    """`TransformerBlock` with the fused FFN, attention and dense layers.

    Args: those of `TransformerBlock`.
    """

    feed_forward_class = FusedFeedForward
    attention_class = FusedRelativeAttention
    dense_class = FusedDense
    norm_class = FusedLayerNorm
