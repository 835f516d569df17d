"""Tests for the convolutional layers: stem, SE, MBConv, head."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import coatnet_tf
from coatnet_tf.kernels import fused
from tests.coatnet_tf import layer_test_harness


class HarnessTest(layer_test_harness.LayerTestCase):
    """Every convolutional layer through the shared harness."""

    def test_conv_stem(self):
        self.run_layer_test(
            coatnet_tf.ConvStem,
            dict(width=8),
            (2, 16, 12, 3),
            (2, 8, 6, 8),
            call_kwargs=dict(training=False),
            run_xla=True,
        )

    def test_squeeze_excitation(self):
        self.run_layer_test(
            coatnet_tf.SqueezeExcitation,
            dict(bottleneck=2),
            (2, 5, 4, 8),
            (2, 5, 4, 8),
        )

    @parameterized.named_parameters(
        ("stride1_same_width", 8, 1, (2, 6, 6, 8), (2, 6, 6, 8)),
        ("stride2_new_width", 16, 2, (2, 6, 6, 8), (2, 3, 3, 16)),
        ("stride2_odd_side", 8, 2, (2, 5, 7, 8), (2, 3, 4, 8)),
    )
    def test_mbconv(self, width, stride, input_shape, output_shape):
        self.run_layer_test(
            coatnet_tf.MBConvBlock,
            dict(width=width, stride=stride, drop_path_rate=0.1),
            input_shape,
            output_shape,
            call_kwargs=dict(training=False),
            run_xla=True,
        )

    def test_stochastic_depth(self):
        self.run_layer_test(
            coatnet_tf.StochasticDepth,
            dict(rate=0.5),
            (4, 3, 3, 2),
            (4, 3, 3, 2),
            call_kwargs=dict(training=False),
            bf16_atol=0.05,
            run_xla=True,
        )

    @parameterized.named_parameters(
        ("pre_logits", dict(num_classes=5, pre_logits_size=6), (2, 5)),
        ("no_pre_logits", dict(num_classes=5), (2, 5)),
        ("features_only", dict(num_classes=0, pre_logits_size=6), (2, 6)),
    )
    def test_classification_head(self, kwargs, output_shape):
        layer_dtype = tf.float32 if kwargs["num_classes"] else tf.bfloat16
        self.run_layer_test(
            coatnet_tf.ClassificationHead,
            dict(kwargs, dropout_rate=0.1, head_init_bias=-2.0),
            (2, 3, 3, 8),
            output_shape,
            call_kwargs=dict(training=False),
            expected_bf16_dtype=layer_dtype,
        )


# Each paper-formula test runs on the reference layer and on its fused
# subclass (coatnet_tf.kernels), which must compute the same.
BOTH_STEMS = (
    ("reference", coatnet_tf.ConvStem),
    ("fused", fused.FusedConvStem),
)
BOTH_MBCONVS = (
    ("reference", coatnet_tf.MBConvBlock),
    ("fused", fused.FusedMBConvBlock),
)


class StemTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(*BOTH_STEMS)
    def test_inference_matches_conv_norm_gelu_conv(self, cls):
        stem = cls(8)
        x = tf.random.stateless_normal([2, 10, 6, 3], seed=[6, 1])
        stem(x)
        norm = stem.norm0
        norm.moving_mean.assign(tf.linspace(-1.0, 1.0, 8))
        norm.moving_variance.assign(tf.linspace(0.5, 3.0, 8))
        norm.gamma.assign(tf.linspace(0.5, 1.5, 8))
        norm.beta.assign(tf.linspace(-0.2, 0.2, 8))
        h = tf.nn.conv2d(x, stem.conv0.kernel, 2, "SAME") + stem.conv0.bias
        h = (h - norm.moving_mean) / tf.sqrt(
            norm.moving_variance + norm.epsilon
        ) * norm.gamma + norm.beta
        h = tf.nn.gelu(h, approximate=False)
        h = tf.nn.conv2d(h, stem.conv1.kernel, 1, "SAME") + stem.conv1.bias
        self.assertAllClose(stem(x, training=False), h, atol=1e-5)


class MBConvTest(tf.test.TestCase, parameterized.TestCase):
    def test_stride_on_first_conv(self):
        # Eq. 5: the stride sits on the first 1x1 conv, not the depthwise.
        block = coatnet_tf.MBConvBlock(16, stride=2)
        block(tf.zeros([1, 8, 8, 8]))
        self.assertEqual(block.expand_conv.strides, (2, 2))
        self.assertEqual(block.depthwise_conv.strides, (1, 1))
        self.assertEqual(block.expand_conv.filters, 64)  # 4 x output width.
        self.assertEqual(block.se.bottleneck, 4)  # 0.25 x output width.

    @staticmethod
    def eq5_reference(block, x, training):
        """Eq. 5 written with plain ops and the block's variables."""

        def bn(norm, t):
            if training:
                mean, variance = tf.nn.moments(t, [0, 1, 2])
            else:
                mean, variance = norm.moving_mean, norm.moving_variance
            return (t - mean) / tf.sqrt(
                variance + norm.epsilon
            ) * norm.gamma + norm.beta

        def gelu(t):
            return 0.5 * t * (1 + tf.math.erf(t / np.sqrt(2.0)))

        pooled = tf.nn.max_pool2d(x, 2, 2, "VALID")  # Pool(x)
        shortcut = (
            tf.nn.conv2d(pooled, block.shortcut_proj.kernel, 1, "VALID")
            + block.shortcut_proj.bias
        )
        h = bn(block.pre_norm, x)[:, ::2, ::2, :]  # 1x1 conv with stride 2.
        h = gelu(
            bn(
                block.expand_norm,
                tf.nn.conv2d(h, block.expand_conv.kernel, 1, "VALID"),
            )
        )
        h = tf.nn.depthwise_conv2d(
            h, block.depthwise_conv.depthwise_kernel, [1, 1, 1, 1], "SAME"
        )
        h = gelu(bn(block.depthwise_norm, h))
        se = block.se
        gate = tf.reduce_mean(h, [1, 2]) @ se.reduce.kernel + se.reduce.bias
        gate = gelu(gate) @ se.expand.kernel + se.expand.bias
        h = h * tf.sigmoid(gate)[:, None, None, :]
        h = tf.nn.conv2d(h, block.project_conv.kernel, 1, "VALID")
        h = h + block.project_conv.bias
        return shortcut + h

    def block_with_statistics(self, cls):
        x = tf.random.stateless_normal([2, 6, 6, 8], seed=[4, 2])
        block = cls(12, stride=2)
        block(x)
        # Non-trivial BatchNorm statistics, so inference differs from train.
        for norm in (block.pre_norm, block.expand_norm, block.depthwise_norm):
            c = norm.moving_mean.shape[0]
            norm.moving_mean.assign(tf.linspace(-0.5, 0.5, c))
            norm.moving_variance.assign(tf.linspace(0.5, 2.0, c))
            norm.gamma.assign(tf.linspace(0.8, 1.2, c))
        return block, x

    @parameterized.named_parameters(*BOTH_MBCONVS)
    def test_matches_eq5(self, cls):
        block, x = self.block_with_statistics(cls)
        y = block(x, training=False)
        self.assertAllClose(
            y, self.eq5_reference(block, x, training=False), atol=1e-5
        )

    @parameterized.named_parameters(*BOTH_MBCONVS)
    def test_training_matches_eq5_with_gradients(self, cls):
        # Values and every gradient must be those of the plain Eq. 5 (the
        # fused block folds the SE gate into the projection kernel).
        block, x = self.block_with_statistics(cls)
        variables = block.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = block(x, training=True)
            want = self.eq5_reference(block, x, training=True)
            loss_ours = tf.reduce_sum(ours * tf.sin(ours))
            loss_want = tf.reduce_sum(want * tf.sin(want))
        self.assertAllClose(ours, want, atol=1e-5)
        grads_ours = tape.gradient(loss_ours, [x] + variables)
        grads_want = tape.gradient(loss_want, [x] + variables)
        for v, a, b in zip(["x"] + variables, grads_ours, grads_want):
            self.assertAllClose(a, b, atol=1e-4, rtol=1e-4, msg=str(v))

    @parameterized.named_parameters(*BOTH_MBCONVS)
    def test_identity_shortcut_without_projection(self, cls):
        block = cls(8, stride=2)
        x = tf.random.stateless_normal([1, 4, 4, 8], seed=[1, 1])
        block(x)
        self.assertIsNone(block.shortcut_proj)
        # Zero the residual branch: what is left is Pool(x), a max pool.
        block.project_conv.kernel.assign(
            tf.zeros_like(block.project_conv.kernel)
        )
        block.project_conv.bias.assign(tf.zeros_like(block.project_conv.bias))
        self.assertAllClose(block(x), tf.nn.max_pool2d(x, 2, 2, "VALID"))

    def test_distinct_initial_kernels(self):
        # Unseeded tf_keras initializer instances repeat their values; each
        # layer must get its own.
        a, b = coatnet_tf.MBConvBlock(8), coatnet_tf.MBConvBlock(8)
        x = tf.zeros([1, 4, 4, 8])
        a(x), b(x)
        self.assertNotAllClose(a.expand_conv.kernel, b.expand_conv.kernel)
        self.assertNotAllClose(a.project_conv.kernel, b.project_conv.kernel)


class HeadTest(tf.test.TestCase):
    def test_initial_logits_are_the_bias(self):
        head = coatnet_tf.ClassificationHead(7, 6, head_init_bias=-4.0)
        logits = head(tf.random.stateless_normal([3, 2, 2, 5], seed=[0, 0]))
        self.assertAllClose(logits, tf.fill([3, 7], -4.0))

    def test_float32_logits_under_mixed_precision(self):
        tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            head = coatnet_tf.ClassificationHead(3, 4)
            logits = head(tf.ones([2, 2, 2, 4]))
        finally:
            tf_keras.mixed_precision.set_global_policy("float32")
        self.assertEqual(logits.dtype, tf.float32)
        self.assertEqual(head.pre_logits.compute_dtype, "bfloat16")


if __name__ == "__main__":
    tf.test.main()
