"""Tests for the convolutional layers: stem, SE, MBConv, head, drop path."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import coatnet_tf
from coatnet_tf import ops
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


class GradientTest(tf.test.TestCase, parameterized.TestCase):
    """Hand-written gradients equal TensorFlow's own."""

    @staticmethod
    def grads(conv, x, kernel):
        """d/dx and d/dkernel of a nonlinear loss of conv(x, kernel)."""
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x, kernel)
            loss = tf.reduce_sum(y * tf.sin(y))
        return tape.gradient(loss, [x, kernel])

    def assert_same_conv(self, ours, reference, x, kernel):
        self.assertAllClose(ours(x, kernel), reference(x, kernel), atol=1e-5)
        for a, b in zip(
            self.grads(ours, x, kernel), self.grads(reference, x, kernel)
        ):
            self.assertAllClose(a, b, atol=1e-4, rtol=1e-5)

    @parameterized.parameters(
        (2, 5, 7, 3, 4), (1, 1, 1, 2, 2), (3, 8, 6, 16, 8)
    )
    def test_conv3x3_stride1(self, b, h, w, c, o):
        x = tf.random.stateless_normal([b, h, w, c], seed=[h, w])
        kernel = tf.random.stateless_normal([3, 3, c, o], seed=[c, o])
        self.assert_same_conv(
            ops.conv3x3_same,
            lambda t, k: tf.nn.conv2d(t, k, 1, "SAME"),
            x,
            kernel,
        )

    def test_conv3x3_kernel_grad_with_unknown_batch(self):
        x = tf.random.stateless_normal([2, 5, 4, 3], seed=[5, 5])
        dy = tf.random.stateless_normal([2, 5, 4, 6], seed=[6, 6])
        spec = [
            tf.TensorSpec([None, 5, 4, 3]),
            tf.TensorSpec([None, 5, 4, 6]),
        ]
        dynamic = tf.function(ops.conv3x3_kernel_grad, input_signature=spec)
        self.assertAllClose(
            dynamic(x, dy), ops.conv3x3_kernel_grad(x, dy), atol=1e-5
        )

    @parameterized.parameters(
        # Even and odd sides: SAME pads 0/1 or 1/1 for stride 2; even
        # sides take the patches from phases, odd ones extract_patches.
        (2, 8, 6, 3, 4),
        (2, 4, 4, 3, 5),
        (1, 7, 5, 3, 2),
        (2, 1, 2, 2, 3),
        (1, 9, 9, 5, 6),
    )
    def test_conv3x3_stride2(self, b, h, w, c, o):
        x = tf.random.stateless_normal([b, h, w, c], seed=[h, w + 1])
        kernel = tf.random.stateless_normal([3, 3, c, o], seed=[c, o + 1])
        self.assert_same_conv(
            ops.conv3x3_stride2,
            lambda t, k: tf.nn.conv2d(t, k, 2, "SAME"),
            x,
            kernel,
        )

    @parameterized.parameters(
        # Even batches split the kernel gradient in halves up to 96 input
        # channels; odd batches and wider inputs do not.
        (1, 2, 4, 6, 3, 5),
        (2, 2, 5, 7, 3, 4),
        (2, 1, 5, 7, 3, 4),
        (1, 2, 3, 3, 100, 4),
        (2, 2, 6, 4, 3, 5),  # Even sides: subsample_2x's own gradient.
    )
    def test_conv1x1(self, stride, b, h, w, c, o):
        x = tf.random.stateless_normal([b, h, w, c], seed=[h, stride])
        kernel = tf.random.stateless_normal([1, 1, c, o], seed=[c, o])
        self.assert_same_conv(
            lambda t, k: ops.conv1x1(t, k, stride),
            lambda t, k: tf.nn.conv2d(t, k, stride, "VALID"),
            x,
            kernel,
        )

    @parameterized.parameters(
        (ops.Conv3x3, 1, "SAME"),
        (ops.Conv3x3, 2, "SAME"),
        (ops.Conv1x1, 1, "VALID"),
        (ops.Conv1x1, 2, "VALID"),
    )
    def test_conv_layer(self, cls, stride, padding):
        layer = cls(4, strides=stride)
        x = tf.random.stateless_normal([1, 5, 7, 2], seed=[0, 3])
        y = layer(x)
        self.assertAllClose(
            y,
            tf.nn.conv2d(x, layer.kernel, stride, padding) + layer.bias,
            atol=1e-6,
        )
        clone = cls.from_config(layer.get_config())
        self.assertEqual(clone.get_config(), layer.get_config())
        self.assertEqual(clone.strides, (stride, stride))
        with self.assertRaisesRegex(ValueError, "strides must be 1 or 2"):
            cls(4, strides=3)

    def test_model_uses_the_fast_convs(self):
        stem = coatnet_tf.ConvStem(4)
        self.assertIsInstance(stem.conv0, ops.Conv3x3)
        self.assertEqual(stem.conv0.strides, (2, 2))
        self.assertIsInstance(stem.conv1, ops.Conv3x3)
        block = coatnet_tf.MBConvBlock(8, stride=2)
        block(tf.zeros([1, 4, 4, 6]))
        for conv in (
            block.expand_conv,
            block.project_conv,
            block.shortcut_proj,
        ):
            self.assertIsInstance(conv, ops.Conv1x1)
        self.assertEqual(block.expand_conv.strides, (2, 2))

    @parameterized.parameters((1, 8), (2, 6), (4, 1))
    def test_matmul_tn(self, groups, rows_per_group):
        a = tf.random.stateless_normal([groups * rows_per_group, 3], [1, 2])
        b = tf.random.stateless_normal([groups * rows_per_group, 5], [3, 4])
        self.assertAllClose(
            ops.matmul_tn(a, b, groups),
            tf.matmul(a, b, transpose_a=True),
            atol=1e-5,
        )

    def test_row_halves(self):
        self.assertEqual(ops.row_halves(16), 2)
        self.assertEqual(ops.row_halves(3), 1)
        self.assertEqual(ops.row_halves(None), 1)

    @parameterized.parameters((2, 5, 3, 4), (3, 4, 2, 6), (2, 3, 100, 2))
    def test_gated_pixel_matmul(self, b, side, c, o):
        x = tf.random.stateless_normal([b, side, side, c], seed=[b, c])
        gate = tf.random.stateless_uniform([b, c], seed=[c, o])
        kernel = tf.random.stateless_normal([c, o], seed=[o, b])

        def reference(x, gate, kernel):
            return tf.nn.conv2d(
                x * gate[:, None, None, :], kernel[None, None], 1, "VALID"
            )

        args = [x, gate, kernel]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(args)
            ours = ops.gated_pixel_matmul(*args)
            want = reference(*args)
            loss_ours = tf.reduce_sum(ours * tf.sin(ours))
            loss_want = tf.reduce_sum(want * tf.sin(want))
        self.assertAllClose(ours, want, atol=1e-5)
        for g, h in zip(
            tape.gradient(loss_ours, args), tape.gradient(loss_want, args)
        ):
            self.assertAllClose(g, h, atol=1e-4, rtol=1e-5)

    @parameterized.parameters((0.0, 1e-5), (100.0, 5e-4))
    def test_batch_normalized_pixel_matmul(self, offset, tolerance):
        # BatchNorm(x W) with the statistics from x's covariance; an input
        # far from zero mean checks the centring (no E[x^2] - E[x]^2). The
        # reference runs in float64: in float32, its own kernel gradient
        # loses ~0.4% to cancellation at offset 100.
        x = offset + tf.random.stateless_normal([2, 6, 4, 5], seed=[5, 1])
        kernel = tf.random.stateless_normal([5, 7], seed=[5, 2])
        gamma = tf.random.stateless_uniform([7], seed=[5, 3]) + 0.5
        beta = tf.random.stateless_normal([7], seed=[5, 4])
        args = [x, kernel, gamma, beta]

        def reference(x, kernel, gamma, beta):
            y = tf.nn.conv2d(x, kernel[None, None], 1, "VALID")
            mean, variance = tf.nn.moments(y, [0, 1, 2])
            z = tf.nn.batch_normalization(y, mean, variance, beta, gamma, 1e-3)
            count = 2 * 6 * 4  # Bessel's correction, as Keras averages.
            return z, mean, variance * count / (count - 1)

        args64 = [tf.cast(a, tf.float64) for a in args]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(args + args64)
            ours = ops.batch_normalized_pixel_matmul(*args, epsilon=1e-3)
            want = reference(*args64)
            loss_ours = tf.reduce_sum(ours[0] * tf.sin(ours[0]))
            loss_want = tf.reduce_sum(want[0] * tf.sin(want[0]))
        for a, b in zip(ours, want):
            self.assertAllClose(a, b, atol=tolerance, rtol=tolerance)
        for g, h in zip(
            tape.gradient(loss_ours, args), tape.gradient(loss_want, args64)
        ):
            self.assertAllClose(g, h, atol=tolerance, rtol=tolerance)

    def test_batch_normalized_pixel_matmul_bfloat16(self):
        # bfloat16 activations: statistics in float32, output bfloat16.
        x = tf.random.stateless_normal([2, 4, 4, 8], seed=[6, 1])
        kernel = tf.random.stateless_normal([8, 16], seed=[6, 2])
        gamma, beta = tf.ones([16]), tf.zeros([16])
        y32, mean32, var32 = ops.batch_normalized_pixel_matmul(
            x, kernel, gamma, beta, 1e-3
        )
        y16, mean16, var16 = ops.batch_normalized_pixel_matmul(
            tf.cast(x, tf.bfloat16), kernel, gamma, beta, 1e-3
        )
        self.assertEqual(y16.dtype, tf.bfloat16)
        self.assertEqual(mean16.dtype, tf.float32)
        self.assertAllClose(tf.cast(y16, tf.float32), y32, atol=0.05)
        self.assertAllClose(var16, var32, rtol=0.02)
        self.assertAllClose(mean16, mean32, atol=0.05)

    def test_gelu_gradient(self):
        x = tf.linspace(-6.0, 6.0, 101)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = ops.gelu(x, approximate=False, training=True)
            plain = ops.gelu(x, approximate=False, training=False)
            reference = tf.nn.gelu(x, approximate=False)
        self.assertAllClose(ours, reference, atol=1e-6)
        self.assertAllClose(plain, reference, atol=1e-6)
        self.assertAllClose(
            tape.gradient(ours, x), tape.gradient(reference, x), atol=1e-6
        )


class StemTest(tf.test.TestCase):
    def test_inference_matches_conv_norm_gelu_conv(self):
        stem = coatnet_tf.ConvStem(8)
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

    def block_with_statistics(self):
        x = tf.random.stateless_normal([2, 6, 6, 8], seed=[4, 2])
        block = coatnet_tf.MBConvBlock(12, stride=2)
        block(x)
        # Non-trivial BatchNorm statistics, so inference differs from train.
        for norm in (block.pre_norm, block.expand_norm, block.depthwise_norm):
            c = norm.moving_mean.shape[0]
            norm.moving_mean.assign(tf.linspace(-0.5, 0.5, c))
            norm.moving_variance.assign(tf.linspace(0.5, 2.0, c))
            norm.gamma.assign(tf.linspace(0.8, 1.2, c))
        return block, x

    def test_matches_eq5(self):
        block, x = self.block_with_statistics()
        y = block(x, training=False)
        self.assertAllClose(
            y, self.eq5_reference(block, x, training=False), atol=1e-5
        )

    def test_training_matches_eq5_with_gradients(self):
        # Training folds the SE gate into the projection kernel; values and
        # every gradient must be those of the plain Eq. 5.
        block, x = self.block_with_statistics()
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

    @parameterized.parameters(1, 2)
    def test_expand_statistics_from_input(self, stride):
        # Training takes expand_norm's statistics from the conv's input;
        # outputs, gradients and every moving average must be those of the
        # plain layers.
        x = tf.random.stateless_normal([2, 6, 6, 8], seed=[7, stride])
        x = x * 2.0 + 1.0
        ours = coatnet_tf.MBConvBlock(8, stride=stride, name="b")
        ours(x)
        plain = coatnet_tf.MBConvBlock.from_config(ours.get_config())
        plain(x)
        plain.set_weights(ours.get_weights())
        plain._expand_stats_from_input = lambda: False
        self.assertTrue(ours._expand_stats_from_input())
        grads = []
        for block in (ours, plain):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = block(x, training=True)
                loss = tf.reduce_sum(y * tf.sin(y))
            grads.append(tape.gradient(loss, [x] + block.trainable_weights))
            grads[-1].append(y)
        for a, b in zip(*grads):
            self.assertAllClose(a, b, atol=1e-4, rtol=1e-4)
        for a, b in zip(
            ours.non_trainable_weights, plain.non_trainable_weights
        ):
            self.assertAllClose(a, b, atol=1e-6, rtol=1e-5, msg=a.name)
        # The moving averages moved.
        self.assertNotAllClose(ours.expand_norm.moving_variance, tf.ones([32]))

    def test_empty_batch_keeps_the_moving_averages(self):
        block = coatnet_tf.MBConvBlock(8)
        block(tf.zeros([1, 4, 4, 8]))
        before = [v.numpy() for v in block.expand_norm.non_trainable_weights]
        y = block(tf.zeros([0, 4, 4, 8]), training=True)
        self.assertEqual(y.shape, [0, 4, 4, 8])
        for a, b in zip(before, block.expand_norm.non_trainable_weights):
            self.assertAllEqual(a, b)

    def test_synchronized_batch_norm_keeps_the_layers(self):
        block = coatnet_tf.MBConvBlock(8, sync_batch_norm=True)
        self.assertFalse(block._expand_stats_from_input())

    def test_folded_inference_without_se_and_approximate_gelu(self):
        x = tf.random.stateless_normal([2, 4, 4, 8], seed=[3, 3])
        for kwargs in ({"se_ratio": 0.0}, {"gelu_approximate": True}):
            block = coatnet_tf.MBConvBlock(8, **kwargs)
            block(x)
            # Unfolded: BatchNorms with moving statistics, plain layers.
            h = block.pre_norm(x, training=False)
            h = block.expand_norm(block.expand_conv(h), training=False)
            h = ops.gelu(h, block.gelu_approximate)
            h = block.depthwise_norm(block.depthwise_conv(h), training=False)
            h = ops.gelu(h, block.gelu_approximate)
            if block.se is not None:
                h = block.se(h)
            want = x + block.project_conv(h)
            self.assertAllClose(block(x, training=False), want, atol=1e-5)

    def test_identity_shortcut_without_projection(self):
        block = coatnet_tf.MBConvBlock(8, stride=2)
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


class StochasticDepthTest(tf.test.TestCase):
    def test_drops_whole_examples(self):
        layer = coatnet_tf.StochasticDepth(0.25)
        x = tf.ones([4000, 2, 3])
        y = layer(x, training=True).numpy()
        per_example = y.reshape(4000, -1)
        # Each example is all zero or all 1 / (1 - rate).
        self.assertTrue(np.all(per_example == per_example[:, :1]))
        self.assertAllClose(np.unique(per_example), [0.0, 1.0 / 0.75])
        kept = np.mean(per_example[:, 0] > 0)
        self.assertBetween(kept, 0.72, 0.78)
        self.assertAllEqual(layer(x, training=False), x)

    def test_rejects_rate_one(self):
        with self.assertRaises(ValueError):
            coatnet_tf.StochasticDepth(1.0)


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
