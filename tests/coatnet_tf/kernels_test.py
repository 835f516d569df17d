"""Tests for coatnet_tf.kernels: each fast path equals the reference.

The CPU-tuned primitives of `kernels.cpu_ops` and `kernels.attention_ops`
against TensorFlow's plain ops, and every fused layer against its reference
layer through the shared harness (`LayerTestCase.run_kernels_test`):
values, gradients and BatchNorm moving statistics, in float32 and
mixed_bfloat16.
"""

import functools
import re

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.grappler import tf_optimizer

import coatnet_tf
from bench import op_profile
from coatnet_tf import kernels, layers, relative_position, transformer
from coatnet_tf.kernels import attention_ops, cpu_ops, fused, gelu_ops
from tests.coatnet_tf import layer_test_harness


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
            cpu_ops.conv3x3_same,
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
        dynamic = tf.function(cpu_ops.conv3x3_kernel_grad, input_signature=spec)
        self.assertAllClose(
            dynamic(x, dy), cpu_ops.conv3x3_kernel_grad(x, dy), atol=1e-5
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
            cpu_ops.conv3x3_stride2,
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
            lambda t, k: cpu_ops.conv1x1(t, k, stride),
            lambda t, k: tf.nn.conv2d(t, k, stride, "VALID"),
            x,
            kernel,
        )

    @parameterized.parameters((1, 8), (2, 6), (4, 1))
    def test_matmul_tn(self, groups, rows_per_group):
        a = tf.random.stateless_normal([groups * rows_per_group, 3], [1, 2])
        b = tf.random.stateless_normal([groups * rows_per_group, 5], [3, 4])
        self.assertAllClose(
            cpu_ops.matmul_tn(a, b, groups),
            tf.matmul(a, b, transpose_a=True),
            atol=1e-5,
        )

    def test_row_halves(self):
        self.assertEqual(cpu_ops.row_halves(16), 2)
        self.assertEqual(cpu_ops.row_halves(3), 1)
        self.assertEqual(cpu_ops.row_halves(None), 1)

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
            ours = cpu_ops.gated_pixel_matmul(*args)
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
            ours = cpu_ops.batch_normalized_pixel_matmul(*args, epsilon=1e-3)
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
        y32, mean32, var32 = cpu_ops.batch_normalized_pixel_matmul(
            x, kernel, gamma, beta, 1e-3
        )
        y16, mean16, var16 = cpu_ops.batch_normalized_pixel_matmul(
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
            ours = gelu_ops.gelu(x, approximate=False, training=True)
            plain = gelu_ops.gelu(x, approximate=False, training=False)
            reference = tf.nn.gelu(x, approximate=False)
        self.assertAllClose(ours, reference, atol=1e-6)
        self.assertAllClose(plain, reference, atol=1e-6)
        self.assertAllClose(
            tape.gradient(ours, x), tape.gradient(reference, x), atol=1e-6
        )

    def test_gelu_bfloat16_computes_in_float32(self):
        # bfloat16 in and out, computed in float32 from the bfloat16
        # values and rounded once, forward and backward.
        x = tf.cast(tf.linspace(-6.0, 6.0, 101), tf.bfloat16)
        dy = tf.cast(tf.linspace(-2.0, 3.0, 101), tf.bfloat16)
        x32, dy32 = tf.cast(x, tf.float32), tf.cast(dy, tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, x32])
            ours = gelu_ops.gelu(x, approximate=False, training=True)
            reference = tf.nn.gelu(x32, approximate=False)
        self.assertEqual(ours.dtype, tf.bfloat16)
        self.assertAllClose(
            tf.cast(ours, tf.float32),
            tf.cast(tf.cast(reference, tf.bfloat16), tf.float32),
            atol=1e-6,  # As in float32: 0.5 + 0.5 erf(x) cancels below -5.
            rtol=2**-8,  # One bfloat16 rounding of a float32 value.
        )
        grad = tape.gradient(ours, x, output_gradients=dy)
        expected = tape.gradient(reference, x32, output_gradients=dy32)
        self.assertEqual(grad.dtype, tf.bfloat16)
        self.assertAllClose(
            tf.cast(grad, tf.float32),
            tf.cast(tf.cast(expected, tf.bfloat16), tf.float32),
            atol=1e-6,
            rtol=2**-8,
        )

    @staticmethod
    def every_value(dtype):
        """Every value of a 16-bit float dtype, NaNs and infinities too."""
        bits = tf.constant(np.arange(2**16, dtype=np.uint16))
        return tf.bitcast(bits, dtype)

    def assert_same_bits(self, a, b):
        a16, b16 = tf.bitcast(a, tf.uint16), tf.bitcast(b, tf.uint16)
        both_nan = tf.math.is_nan(a) & tf.math.is_nan(b)
        self.assertEqual(
            int(tf.math.count_nonzero((a16 != b16) & ~both_nan)), 0
        )

    @parameterized.parameters(tf.bfloat16, tf.float16)
    def test_gelu_16bit_lookups_equal_float32_kernels(self, dtype):
        # Training GELU of a 16-bit float reads tables; forward and
        # backward must equal the float32 kernels, computed here as
        # formulas, to the bit for every input value.
        x = self.every_value(dtype)
        dy = tf.cast(tf.random.stateless_normal([2**16], [4, 2]), dtype)
        step = tf.function(
            lambda x, dy: tf.gradients(
                gelu_ops.gelu(x, approximate=False, training=True),
                x,
                grad_ys=dy,
            )[0]
        )
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gelu_ops.gelu(x, approximate=False, training=True)
        dx = tape.gradient(y, x, output_gradients=dy)
        self.assertEqual((y.dtype, dx.dtype), (dtype, dtype))
        self.assert_same_bits(y, gelu_ops._gelu_forward(x))
        self.assert_same_bits(dx, gelu_ops._gelu_backward(x, dy))
        self.assert_same_bits(step(x, dy), dx)  # tables from a graph
        # The lookups, not the formula kernels, are what training calls.
        graph = step.get_concrete_function(x, dy).graph.as_graph_def()
        called = {f.signature.name for f in graph.library.function}
        kernels = {name for name in called if "_gelu_" in name}
        self.assertTrue(kernels, called)
        self.assertTrue(all("lookup" in name for name in kernels), kernels)
        # The tables hold GELU and its slope, indexed by the input's bits.
        values, slopes = gelu_ops.gelu_tables(dtype)
        one = int(tf.bitcast(tf.constant(1.0, dtype), tf.uint16))
        self.assertAllClose(values[one], 0.8413, atol=2e-3)
        self.assertEqual(slopes.dtype, tf.float32)
        self.assertAllClose(slopes[one], 1.0833, atol=1e-4)
        self.assertAllClose(slopes[0], 0.5)  # +0

    def test_gelu_tables_in_a_graph(self):
        # In a TF1-style graph, tables this process built eagerly become
        # graph constants with their values. (A process that never ran
        # eagerly computes them in the graph, where erf and exp round
        # differently: not compared here.)
        want = [t.numpy() for t in gelu_ops.gelu_tables(tf.bfloat16)]
        with tf.Graph().as_default():
            tables = gelu_ops.gelu_tables(tf.bfloat16)
            self.assertFalse(isinstance(tables[0], tf.__internal__.EagerTensor))
            with tf.compat.v1.Session() as session:
                got = session.run(tables)
        for a, b in zip(got, want):
            bits = f"u{a.itemsize}"  # NaNs compare equal as bits
            self.assertAllEqual(a.view(bits), b.view(bits))

    def test_gelu_tables_refuse_other_dtypes(self):
        with self.assertRaisesRegex(ValueError, "16-bit floats"):
            gelu_ops.gelu_tables(tf.float32)

    @parameterized.parameters(False, True)
    def test_gelu_pass(self, approximate):
        x = tf.random.stateless_normal([2, 4, 4, 32], seed=[3, 4]) * 3.0
        shift = tf.constant(0.3)
        want = tf.nn.gelu(x + shift, approximate=approximate)
        graph = tf.function(gelu_ops.gelu_pass)  # fused by oneDNN there
        for fn in (gelu_ops.gelu_pass, graph):
            self.assertAllClose(
                fn(x, shift, approximate), want, atol=1e-5, rtol=1e-5
            )
        # bfloat16: the float32 GELU of the bfloat16 sum, rounded once.
        x16, shift16 = tf.cast(x, tf.bfloat16), tf.cast(shift, tf.bfloat16)
        y16 = graph(x16, shift16, approximate)
        self.assertEqual(y16.dtype, tf.bfloat16)
        sum32 = tf.cast(x16, tf.float32) + tf.cast(shift16, tf.float32)
        self.assertAllClose(
            tf.cast(y16, tf.float32),
            tf.nn.gelu(sum32, approximate=approximate),
            atol=1e-5,
            rtol=2**-7,
        )
        # Sizes the rows of 16 do not tile, or not known, take the formula.
        odd = x[:, :3, :3, :5]  # 45 values per example
        self.assertAllClose(
            gelu_ops.gelu_pass(odd, shift, approximate),
            tf.nn.gelu(odd + shift, approximate=approximate),
            atol=1e-6,
        )
        dynamic = tf.function(
            lambda x: gelu_ops.gelu_pass(x, shift, approximate),
            input_signature=[tf.TensorSpec([None, None, None, 32])],
        )
        self.assertAllClose(dynamic(x), want, atol=1e-5, rtol=1e-5)

    def test_bias_add(self):
        x = tf.random.stateless_normal([2, 3, 5, 4], seed=[7, 8])
        bias = tf.constant([0.5, -1.0, 2.0, 0.25])
        for training in (False, True):
            self.assert_same_conv(
                functools.partial(cpu_ops.bias_add, training=training),
                tf.nn.bias_add,
                x,
                bias,
            )
        # A bfloat16 bias gradient over many rows: the float32 sum of its
        # terms, rounded once (TensorFlow's BiasAddGrad sums in bfloat16,
        # and misses this by more than the sums' own size).
        dy = tf.cast(
            tf.random.stateless_normal([64, 128, 32], seed=[1, 2]),
            tf.bfloat16,
        )
        x16, bias16 = tf.zeros_like(dy), tf.zeros([32], tf.bfloat16)
        with tf.GradientTape() as tape:
            tape.watch(bias16)
            y = cpu_ops.bias_add(x16, bias16, training=True)
        grad = tape.gradient(y, bias16, output_gradients=dy)
        self.assertEqual(grad.dtype, tf.bfloat16)
        want = tf.reduce_sum(tf.cast(dy, tf.float32), axis=[0, 1])
        self.assertAllClose(
            tf.cast(grad, tf.float32), want, rtol=2**-8, atol=1e-3
        )

    def test_column_sums(self):
        rows = tf.random.stateless_normal([37, 6], seed=[3, 4])
        want = tf.reduce_sum(rows, axis=0)
        self.assertAllClose(cpu_ops.column_sums(rows), want, atol=1e-5)
        dynamic = tf.function(
            cpu_ops.column_sums,
            input_signature=[tf.TensorSpec([None, 6])],
        )
        self.assertAllClose(dynamic(rows), want, atol=1e-5)

    def test_spatial_mean(self):
        x = tf.random.stateless_normal([3, 5, 7, 4], seed=[5, 6])
        want = tf.reduce_mean(x, axis=[1, 2])
        self.assertAllClose(cpu_ops.spatial_mean(x), want, atol=1e-6)
        dynamic = tf.function(
            cpu_ops.spatial_mean,
            input_signature=[tf.TensorSpec([None, None, None, 4])],
        )
        self.assertAllClose(dynamic(x), want, atol=1e-6)

    def test_spatial_mean_accumulates_bfloat16_in_float32(self):
        # 3136 ones: a bfloat16 running sum stops at 256 (8 bits of
        # mantissa), which would give 0.08 instead of 1.
        ones = tf.ones([2, 56, 56, 3], tf.bfloat16)
        self.assertAllEqual(
            cpu_ops.spatial_mean(ones), tf.ones([2, 3], tf.bfloat16)
        )
        x = tf.random.stateless_normal([2, 56, 56, 8], seed=[7, 8]) + 1.0
        x = tf.cast(x, tf.bfloat16)
        want = tf.reduce_mean(tf.cast(x, tf.float64), axis=[1, 2])
        got = tf.cast(cpu_ops.spatial_mean(x), tf.float64)
        # One rounding of a value near 1 to bfloat16: at most 2^-8.
        self.assertAllClose(got, want, atol=2.0**-8, rtol=0)

    def test_layer_norm(self):
        x = tf.random.stateless_normal([3, 4, 5, 16], seed=[9, 1]) * 2 + 0.7
        gamma = tf.random.stateless_uniform([16], [9, 2], 0.5, 1.5)
        beta = tf.random.stateless_normal([16], [9, 3])
        norm = tf_keras.layers.LayerNormalization(epsilon=1e-5)
        norm.build(x.shape)
        norm.set_weights([gamma.numpy(), beta.numpy()])
        want = norm(x)
        dynamic = tf.function(
            lambda x, g, b: cpu_ops.layer_norm(x, g, b, 1e-5),
            input_signature=[
                tf.TensorSpec([None, 4, 5, 16]),
                tf.TensorSpec([16]),
                tf.TensorSpec([16]),
            ],
        )
        for got in (
            cpu_ops.layer_norm(x, gamma, beta, 1e-5),
            dynamic(x, gamma, beta),
        ):
            self.assertAllClose(got, want, atol=2e-6, rtol=2e-6)
        # epsilon as given: fused_batch_norm's wrapper would raise 1e-6 to
        # 1.001e-5, a visible change for rows of tiny variance.
        tiny = x * 1e-3
        norm.epsilon = 1e-6
        self.assertAllClose(
            cpu_ops.layer_norm(tiny, gamma, beta, 1e-6),
            norm(tiny),
            atol=2e-5,
            rtol=2e-5,
        )
        # bfloat16 in and out, statistics in float32: within the output's
        # rounding and that of gamma and beta.
        got = dynamic.python_function(tf.cast(x, tf.bfloat16), gamma, beta)
        self.assertEqual(got.dtype, tf.bfloat16)
        self.assertAllClose(
            tf.cast(got, tf.float32), want, atol=2**-6, rtol=2**-7
        )


def _executed_op_types(test, fn, *args) -> set[str]:
    """The op types one call of fn(*args) ran, read from a profiler trace.

    The oneDNN rewrites (`_MklLayerNorm`, `_MklFusedBatchMatMulV2`) are
    made when a traced function is optimized for its first run, so the
    ops that ran show whether a graph was rewritten.
    """
    fn(*args)
    logdir = test.get_temp_dir() + "/trace"
    tf.profiler.experimental.start(logdir)
    try:
        fn(*args).numpy()
    finally:
        tf.profiler.experimental.stop()
    return set(op_profile.read_host_op_times(logdir))


def _plain_attention(q, k, v, bias):
    """`RelativeAttention.attend` as autodiff differentiates it."""
    logits = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) + bias
    probs = tf.cast(tf.nn.softmax(logits, axis=-1), v.dtype)
    return tf.matmul(probs, v)


class AttentionOpsTest(tf.test.TestCase):
    def _inputs(self, dtype, spread=3.0):
        # Peaked softmaxes (logits of a few units), as in a trained model.
        shape = [3, 2, 20, 8]
        q, k, v = (
            tf.cast(tf.random.stateless_normal(shape, seed=[s, 1]), dtype)
            for s in (1, 2, 3)
        )
        bias = spread * tf.random.stateless_normal([2, 20, 20], seed=[4, 1])
        out_grad = tf.cast(
            tf.random.stateless_normal(shape, seed=[5, 1]), dtype
        )
        return q, k, v, bias, out_grad

    def _value_and_grads(self, fn, q, k, v, bias, out_grad):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v, bias])
            out = fn(q, k, v, bias)
        return [out, *tape.gradient(out, [q, k, v, bias], out_grad)]

    def test_attention_float32(self):
        inputs = self._inputs(tf.float32)
        ours = self._value_and_grads(attention_ops.attention, *inputs)
        want = self._value_and_grads(_plain_attention, *inputs)
        for a, b in zip(ours, want):
            self.assertEqual(a.dtype, b.dtype)
            self.assertAllClose(a, b, atol=2e-5, rtol=2e-5)

    def test_attention_bfloat16(self):
        # Both paths round to bfloat16 at different points: each is held
        # against the float32 gradients of the same (rounded) inputs, and
        # ours may err at most twice as much as the plain one, plus 1%.
        inputs16 = self._inputs(tf.bfloat16)
        inputs32 = [
            tf.cast(x, tf.float32) if x.dtype == tf.bfloat16 else x
            for x in inputs16
        ]
        exact = self._value_and_grads(_plain_attention, *inputs32)
        ours = self._value_and_grads(attention_ops.attention, *inputs16)
        plain = self._value_and_grads(_plain_attention, *inputs16)
        names = ["out", "q", "k", "v", "bias"]
        for name, e, a, b in zip(names, exact, ours, plain):
            self.assertEqual(a.dtype, b.dtype, name)

            def rms(x):
                return float(tf.sqrt(tf.reduce_mean(tf.square(x))))

            ours_err = rms(tf.cast(a, tf.float32) - e)
            plain_err = rms(tf.cast(b, tf.float32) - e)
            self.assertLessEqual(ours_err, 2 * plain_err + 0.01 * rms(e), name)

    def test_attention_unknown_batch(self):
        q, k, v, bias, out_grad = self._inputs(tf.float32)
        spec = tf.TensorSpec([None, *q.shape[1:]])

        @tf.function(
            input_signature=[spec, spec, spec, tf.TensorSpec(bias.shape)]
        )
        def grads(q, k, v, bias):
            return self._value_and_grads(
                attention_ops.attention, q, k, v, bias, out_grad
            )

        want = self._value_and_grads(_plain_attention, q, k, v, bias, out_grad)
        for a, b in zip(grads(q, k, v, bias), want):
            self.assertAllClose(a, b, atol=2e-5, rtol=2e-5)

    def test_head_projections(self):
        heads, d, c = 3, 4, 5
        x = tf.random.stateless_normal([2, 3, 4, c], seed=[6, 1])
        kernel = tf.random.stateless_normal([c, 3 * heads * d], seed=[7, 1])
        bias = tf.random.stateless_normal([3 * heads * d], seed=[8, 1])
        qkv = tf.matmul(tf.reshape(x, [-1, c]), kernel) + bias
        qkv = tf.reshape(qkv, [2, 12, 3, heads, d])
        want = tf.unstack(tf.transpose(qkv, [2, 3, 0, 1, 4]))
        kernels, biases = attention_ops.head_weights(kernel, bias, heads)
        ours = attention_ops.head_projections(x, kernels, biases)
        for a, b in zip(ours, want):
            self.assertEqual(a.shape, [heads, 2, 12, d])
            self.assertAllClose(a, b, atol=1e-5, rtol=1e-5)

    def test_inference_attention(self):
        # Against the reference formula, batch major with float32 logits,
        # bias and softmax: float32 to rounding; bfloat16, which adds the
        # bias to bfloat16 logits, within twice the reference's own error
        # against float32 arithmetic on the same rounded inputs.
        q, k, v, bias, _ = self._inputs(tf.float32, spread=1.0)
        q = q * 8**-0.5  # the scaled q the reference attends with
        heads_major = functools.partial(tf.transpose, perm=[1, 0, 2, 3])

        def ours(q, k, v, bias):
            out = attention_ops.inference_attention(
                *(heads_major(t) for t in (q * 8**0.5, k, v)),
                tf.cast(bias, q.dtype)[:, None],
                8**-0.5,
            )
            return heads_major(out)

        exact = _plain_attention(q, k, v, bias)
        self.assertAllClose(ours(q, k, v, bias), exact, atol=1e-5, rtol=1e-5)
        q16, k16, v16 = (tf.cast(t, tf.bfloat16) for t in (q, k, v))
        exact16 = _plain_attention(
            *(tf.cast(t, tf.float32) for t in (q16, k16, v16)), bias
        )
        got = ours(q16, k16, v16, bias)
        self.assertEqual(got.dtype, tf.bfloat16)

        def err(x):
            diff = tf.cast(x, tf.float32) - exact16
            return float(tf.sqrt(tf.reduce_mean(tf.square(diff))))

        self.assertLessEqual(
            err(got), 2 * err(_plain_attention(q16, k16, v16, bias))
        )
        self.assertGreater(err(got), 0)

    def test_inference_attention_fuses_scale_and_bias(self):
        # One oneDNN matmul writes the biased logits: no AddV2 of the
        # [heads, B, N, N] logits is left. The rewrite is made when the
        # function runs, so its trace is read.
        q, k, v, bias, _ = self._inputs(tf.float32)
        spec = tf.TensorSpec([2, None, 20, 8])
        fn = tf.function(
            lambda q, k, v: attention_ops.inference_attention(
                q, k, v, bias[:, None], 0.25
            ),
            input_signature=[spec] * 3,
        )
        args = [tf.transpose(t, [1, 0, 2, 3]) for t in (q, k, v)]
        ops = _executed_op_types(self, fn, *args)
        self.assertIn("_MklFusedBatchMatMulV2", ops)
        self.assertNotIn("AddV2", ops)

    def test_inference_projects_heads_without_a_transpose(self):
        # Transposes of activations (their shape has the unknown batch):
        # the reference moves the projection's heads and the output's,
        # the fused layer only the output's.
        counts = []
        for cls in (
            relative_position.RelativeAttention,
            fused.FusedRelativeAttention,
        ):
            layer = cls(8, 4, (3, 3))
            fn = tf.function(lambda x, layer=layer: layer(x, training=False))
            spec = tf.TensorSpec([None, 3, 3, 6])
            graph = fn.get_concrete_function(spec).graph
            counts.append(
                sum(
                    op.type == "Transpose"
                    and not op.outputs[0].shape.is_fully_defined()
                    for op in graph.get_operations()
                )
            )
        self.assertEqual(counts, [2, 1])


class FreezeForInferenceTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("float32", "mixed_bfloat16")
    def test_frozen_model_computes_the_same_bits(self, policy):
        x = tf.random.stateless_uniform([3, 32, 32, 3], seed=[2, 5])
        tf_keras.mixed_precision.set_global_policy(policy)
        try:
            model = coatnet_tf.create_model("coatnet-tiny", 5, 32)
            model(x[:1])
        finally:
            tf_keras.mixed_precision.set_global_policy("float32")
        before = tf.function(lambda x: model(x, training=False))
        want = before(x)
        weights = len(model.variables)
        dynamic = tf.TensorSpec([None, 32, 32, 3])
        want_dynamic = before.get_concrete_function(dynamic)(x)
        # coatnet-tiny has three Transformer blocks: 3 attention layers
        # (7 copies each) and 6 pre-norms (gamma and beta).
        frozen = 3 * 7 + 6 * 2
        self.assertEqual(coatnet_tf.freeze_for_inference(model), 9)
        self.assertEqual(coatnet_tf.freeze_for_inference(model), 9)
        self.assertLen(model.variables, weights + frozen)
        after = tf.function(lambda x: model(x, training=False))
        self.assertAllEqual(after(x), want)
        # The traced forward for a batch of unknown size (a served one)
        # reads the frozen copies, not the weights they were derived
        # from, and re-lays out no kernel.
        traced = after.get_concrete_function(dynamic)
        self.assertAllEqual(traced(x), want_dynamic)
        read = [v.name for v in traced.variables]
        self.assertLen([n for n in read if "/inference/" in n], frozen)
        self.assertFalse([n for n in read if "qkv/" in n])
        self.assertFalse([n for n in read if "relative_position_bias" in n])
        pre_norm = re.compile(r"/(attn|ffn)_norm/")
        self.assertFalse(
            [n for n in read if pre_norm.search(n) and "/inference/" not in n]
        )
        # Nor casts the pre-norms' gamma and beta (bfloat16 when frozen).
        self.assertFalse(
            [
                op
                for op in traced.graph.get_operations()
                if op.type == "Cast" and pre_norm.search(op.name)
            ]
        )
        self.assertFalse(
            [
                op
                for op in traced.graph.get_operations()
                if op.type in ("Transpose", "GatherV2")
                and "/attention/" in op.name
                and op.outputs[0].shape.is_fully_defined()
            ]
        )
        with self.assertRaisesRegex(ValueError, "frozen for inference"):
            model(x, training=True)

    def test_reference_kernels_have_nothing_to_freeze(self):
        model = coatnet_tf.create_model(
            "coatnet-tiny", 5, 32, kernels="reference"
        )
        model(tf.zeros([1, 32, 32, 3]))
        self.assertEqual(coatnet_tf.freeze_for_inference(model), 0)


class FusedLayerTest(layer_test_harness.LayerTestCase):
    """Each fused layer equals its reference layer."""

    def setUp(self):
        super().setUp()
        # A set noise state: training drops examples, the same in both.
        self.noise = coatnet_tf.NoiseState()
        self.noise.set(seed=3, step=5)

    @parameterized.named_parameters(
        ("even", (2, 8, 12, 3), {}),
        ("odd_sides", (2, 7, 9, 3), {}),
        ("approximate_gelu", (2, 8, 8, 3), {"gelu_approximate": True}),
    )
    def test_conv_stem(self, input_shape, kwargs):
        self.run_kernels_test(
            layers.ConvStem,
            fused.FusedConvStem,
            dict(width=8, **kwargs),
            input_shape,
        )

    @parameterized.named_parameters(
        ("stride1_same_width", dict(width=8), (2, 6, 6, 8)),
        ("stride2_new_width", dict(width=16, stride=2), (2, 6, 6, 8)),
        ("stride2_odd_side", dict(width=8, stride=2), (2, 5, 7, 8)),
        ("no_se", dict(width=8, se_ratio=0.0), (2, 4, 4, 8)),
        (
            "approximate_gelu",
            dict(width=8, gelu_approximate=True),
            (2, 4, 4, 8),
        ),
        ("drop_path", dict(width=8, drop_path_rate=0.5), (8, 4, 4, 8)),
    )
    def test_mbconv(self, kwargs, input_shape):
        self.run_kernels_test(
            layers.MBConvBlock,
            fused.FusedMBConvBlock,
            kwargs,
            input_shape,
            noise_state=self.noise,
        )

    def test_mbconv_synchronized_batch_norm(self):
        self.run_kernels_test(
            layers.MBConvBlock,
            fused.FusedMBConvBlock,
            dict(width=8, sync_batch_norm=True),
            (2, 4, 4, 8),
        )

    def test_feed_forward(self):
        self.run_kernels_test(
            transformer.FeedForward,
            fused.FusedFeedForward,
            dict(hidden_size=8, expansion=2),
            (2, 3, 3, 8),
        )

    @parameterized.named_parameters(
        ("new_width", 16, (3, 4, 5, 8), (4, 5)),
        ("same_width", 8, (2, 3, 3, 8), (3, 3)),
    )
    def test_relative_attention(self, width, input_shape, grid):
        self.run_kernels_test(
            relative_position.RelativeAttention,
            fused.FusedRelativeAttention,
            dict(hidden_size=width, head_size=4, grid_size=grid),
            input_shape,
        )

    @parameterized.named_parameters(
        ("stride2_new_width", 16, 2, (4, 6, 6, 8), (3, 3)),
        ("stride1_drop_path", 8, 1, (4, 3, 3, 8), (3, 3)),
    )
    def test_transformer_block(self, width, stride, input_shape, grid):
        self.run_kernels_test(
            transformer.TransformerBlock,
            fused.FusedTransformerBlock,
            dict(
                hidden_size=width,
                head_size=4,
                grid_size=grid,
                stride=stride,
                drop_path_rate=0.5,
            ),
            input_shape,
            noise_state=self.noise,
        )

    @parameterized.named_parameters(
        (
            "stem",
            fused.FusedConvStem,
            dict(width=8),
            (2, 8, 6, 3),
            (2, 4, 3, 8),
        ),
        (
            "mbconv",
            fused.FusedMBConvBlock,
            dict(width=16, stride=2, drop_path_rate=0.1),
            (2, 6, 6, 8),
            (2, 3, 3, 16),
        ),
        (
            "transformer",
            fused.FusedTransformerBlock,
            dict(hidden_size=16, head_size=8, grid_size=(3, 3), stride=2),
            (2, 6, 6, 8),
            (2, 3, 3, 16),
        ),
    )
    def test_harness(self, cls, kwargs, input_shape, output_shape):
        # Config round trip, SavedModel and XLA, as for the references.
        self.run_layer_test(
            cls,
            kwargs,
            input_shape,
            output_shape,
            call_kwargs=dict(training=False),
            run_xla=True,
        )


def _optimized_graph(fn, spec):
    """fn's graph for spec as TensorFlow's graph optimizer leaves it on CPU.

    The oneDNN fusions (`_FusedMatMul` with a GELU) are made there, so a
    test can see whether a fast path's ops still fuse.
    """

    def on_cpu(x):
        with tf.device("/device:CPU:0"):
            return fn(x)

    graph = tf.function(on_cpu).get_concrete_function(spec).graph
    meta = tf.compat.v1.train.export_meta_graph(
        graph_def=graph.as_graph_def(), graph=graph
    )
    meta.collection_def["train_op"].node_list.value.extend(
        [t.op.name for t in graph.outputs]
    )
    return tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)


class FusedLayerNormTest(tf.test.TestCase, parameterized.TestCase):
    def _block(self):
        block = fused.FusedTransformerBlock(32, 8, (4, 4))
        block(tf.zeros([1, 4, 4, 32]))
        return block

    def test_unknown_batch_fuses_into_onednn_layer_norm(self):
        # The pre-norms run as oneDNN's layer normalization; with a folded
        # `Fill`, or rows of rank 4, they would run as a batch norm. The
        # rewrite is made when the function runs, so its trace is read.
        block = self._block()
        dynamic = tf.function(
            lambda x: block(x, training=False),
            input_signature=[tf.TensorSpec([None, 4, 4, 32])],
        )
        ops = _executed_op_types(self, dynamic, tf.zeros([2, 4, 4, 32]))
        self.assertIn("_MklLayerNorm", ops)
        self.assertFalse([op for op in ops if "BatchNorm" in op], ops)

    @parameterized.parameters(
        dict(shape=[2, 4, 4, 32], training=False),
        dict(shape=[None, 4, 4, 32], training=True),
    )
    def test_static_batch_and_training_keep_the_keras_graph(
        self, shape, training
    ):
        # Unfused, the FusedBatchNormV3 form is slower than tf_keras's.
        block = self._block()
        graph = (
            tf.function(lambda x: block(x, training=training))
            .get_concrete_function(tf.TensorSpec(shape))
            .graph
        )
        ops = [op.type for op in graph.get_operations()]
        self.assertNotIn("FusedBatchNormV3", ops)
        self.assertIn("SquaredDifference", ops)

    @parameterized.parameters(
        dict(axis=1, scale=True, center=True),
        dict(axis=-1, scale=False, center=True),
    )
    def test_norm_the_kernel_cannot_take_is_keras_and_unfrozen(self, **kw):
        # Another axis, or no gamma: tf_keras's layer on every path, no
        # frozen copies, and it still trains after a freeze.
        norm = fused.FusedLayerNorm(**kw)
        reference = tf_keras.layers.LayerNormalization(**kw)
        x = tf.random.stateless_normal([3, 4, 8], seed=[1, 7])
        norm(x), reference(x)
        norm.freeze_for_inference()
        self.assertLen(norm.weights, len(reference.weights))
        dynamic = tf.function(
            lambda x: norm(x, training=False),
            input_signature=[tf.TensorSpec([None, 4, 8])],
        )
        self.assertAllClose(dynamic(x), reference(x), atol=1e-6)
        self.assertAllClose(norm(x, training=True), reference(x), atol=1e-6)

    def test_unknown_batch_equals_the_reference_block(self):
        ref = transformer.TransformerBlock(32, 8, (4, 4))
        block = self._block()
        ref(tf.zeros([1, 4, 4, 32]))
        weights = [
            tf.random.stateless_normal(w.shape, [i, 5]).numpy()
            for i, w in enumerate(ref.get_weights())
        ]
        ref.set_weights(weights)
        block.set_weights(weights)
        x = tf.random.stateless_normal([3, 4, 4, 32], seed=[2, 2])
        dynamic = tf.function(
            lambda x: block(x, training=False),
            input_signature=[tf.TensorSpec([None, 4, 4, 32])],
        )
        self.assertAllClose(
            dynamic(x), ref(x, training=False), atol=1e-4, rtol=1e-4
        )


class FusedMBConvTest(tf.test.TestCase, parameterized.TestCase):
    def test_empty_batch_keeps_the_moving_averages(self):
        block = fused.FusedMBConvBlock(8)
        block(tf.zeros([1, 4, 4, 8]))
        self.assertTrue(block._expand_stats_from_input())
        before = [v.numpy() for v in block.expand_norm.non_trainable_weights]
        y = block(tf.zeros([0, 4, 4, 8]), training=True)
        self.assertEqual(y.shape, [0, 4, 4, 8])
        for a, b in zip(before, block.expand_norm.non_trainable_weights):
            self.assertAllEqual(a, b)

    @parameterized.named_parameters(
        # Every GELU of the folded block (after the expansion, after the
        # depthwise conv, in the SE gate) and of the stem becomes a oneDNN
        # matmul epilogue: no Erf is left for Eigen. A constant shift in
        # `gelu_pass` would be folded away with its fusion, and this fail.
        ("mbconv", fused.FusedMBConvBlock, 3),
        ("stem", fused.FusedConvStem, 1),
    )
    def test_inference_gelus_fuse_into_matmuls(self, cls, count):
        layer = cls(32)
        layer(tf.zeros([1, 8, 8, 32]))
        graph = _optimized_graph(
            lambda x: layer(x, training=False),
            tf.TensorSpec([None, 8, 8, 32]),
        )
        ops = [n.op for n in graph.node]
        gelus = [
            n
            for n in graph.node
            if n.op == "_FusedMatMul"
            and b"GeluExact" in n.attr["fused_ops"].list.s
        ]
        self.assertLen(gelus, count, ops)
        self.assertNotIn("Erf", ops)

    def test_statistics_from_input_only_where_the_layer_allows(self):
        self.assertFalse(
            fused.FusedMBConvBlock(
                8, sync_batch_norm=True
            )._expand_stats_from_input()
        )
        block = fused.FusedMBConvBlock(8)
        block.expand_norm.trainable = False
        self.assertFalse(block._expand_stats_from_input())


class FusedDenseTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ([6, 5], False), ([6, 5], True), ([2, 3, 4, 5], True)
    )
    def test_equals_dense(self, shape, training):
        x = tf.random.stateless_normal(shape, seed=[9, 9])
        ours = fused.FusedDense(7, activation="gelu", name="d")
        reference = tf_keras.layers.Dense(7, activation="gelu", name="d")
        reference.build(x.shape)
        ours.build(x.shape)
        ours.set_weights(
            [w + 0.1 for w in reference.get_weights()]  # a non-zero bias
        )
        reference.set_weights(ours.get_weights())
        results = []
        for layer in (ours, reference):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                loss = tf.reduce_sum(y * tf.sin(y))
            results.append(
                [y, *tape.gradient(loss, [x, *layer.trainable_weights])]
            )
        self.assertEqual(results[0][0].shape, results[1][0].shape)
        for a, b in zip(*results):
            self.assertAllClose(a, b, atol=1e-5, rtol=1e-5)


class BiasGradientTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        # Every bias gradient over pixels or tokens is a matmul; the SE
        # gate's two dense layers sum over the batch only and keep Keras's.
        ("stem", fused.FusedConvStem, dict(width=16), 0),
        ("mbconv", fused.FusedMBConvBlock, dict(width=16, stride=2), 2),
        (
            "transformer",
            fused.FusedTransformerBlock,
            dict(hidden_size=32, head_size=16, grid_size=(2, 2), stride=2),
            0,
        ),
    )
    def test_training_graph_bias_gradients(self, cls, kwargs, count):
        layer = cls(**kwargs)
        x = tf.zeros([2, 4, 4, 8])
        layer(x)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                y = layer(x, training=True)
            return tape.gradient(y, layer.trainable_weights)

        graph = step.get_concrete_function(x).graph
        ops = [op.type for op in graph.get_operations()]
        self.assertEqual(ops.count("BiasAddGrad"), count)


class KernelSettingTest(tf.test.TestCase):
    def test_layer_classes(self):
        ref = kernels.layer_classes("reference")
        self.assertIs(ref.mbconv, layers.MBConvBlock)
        self.assertIs(ref.stem, layers.ConvStem)
        self.assertIs(ref.transformer, transformer.TransformerBlock)
        self.assertIs(
            kernels.layer_classes("fused").mbconv, fused.FusedMBConvBlock
        )
        with self.assertRaisesRegex(ValueError, "Unknown kernels 'xla'"):
            kernels.layer_classes("xla")

    def test_models_share_variables_and_checkpoints(self):
        x = tf.random.stateless_normal([2, 32, 32, 3], seed=[1, 9])
        models = {}
        for setting in coatnet_tf.KERNEL_SETTINGS:
            model = coatnet_tf.create_model(
                "coatnet-tiny", 5, 32, kernels=setting, drop_path_rate=0.3
            )
            model(x[:1])
            models[setting] = model
        ref, fast = models["reference"], models["fused"]
        self.assertIsInstance(fast.blocks[0], fused.FusedMBConvBlock)
        self.assertNotIsInstance(ref.blocks[0], fused.FusedMBConvBlock)
        self.assertEqual(
            [(v.name, v.shape) for v in ref.variables],
            [(v.name, v.shape) for v in fast.variables],
        )
        # A checkpoint written with one setting loads in the other.
        path = tf.train.Checkpoint(model=ref).write(
            self.get_temp_dir() + "/reference"
        )
        tf.train.Checkpoint(model=fast).read(path).assert_consumed()
        self.assertAllClose(
            fast(x, training=False), ref(x, training=False), atol=1e-4
        )
        for model in (ref, fast):
            model.set_noise_state(seed=1, step=2)
        self.assertAllClose(
            fast(x, training=True), ref(x, training=True), atol=1e-4
        )


if __name__ == "__main__":
    tf.test.main()
