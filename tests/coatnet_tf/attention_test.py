"""Tests for relative attention, the FFN and the Transformer block."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import coatnet_tf
from tests.coatnet_tf import layer_test_harness


def reference_attention(layer, x):
    """Eq. 3 with explicit loops over queries and keys (NumPy)."""
    h, w = layer.grid_size
    heads, d = layer.num_heads, layer.head_size
    tokens = x.numpy().reshape(x.shape[0], h * w, -1)
    qkv = tokens @ layer.qkv.kernel.numpy() + layer.qkv.bias.numpy()
    q, k, v = np.split(qkv.reshape(x.shape[0], h * w, 3, heads, d), 3, 2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, N, heads, d]
    table = layer.relative_position_bias.numpy()
    positions = [(r, c) for r in range(h) for c in range(w)]
    out = np.zeros_like(q)
    for b in range(x.shape[0]):
        for n in range(heads):
            for i, (ri, ci) in enumerate(positions):
                logits = np.array(
                    [
                        q[b, i, n] @ k[b, j, n] / np.sqrt(d)
                        + table[n, ri - rj + h - 1, ci - cj + w - 1]
                        for j, (rj, cj) in enumerate(positions)
                    ]
                )
                p = np.exp(logits - logits.max())
                out[b, i, n] = (p / p.sum()) @ v[b, :, n]
    out = out.reshape(x.shape[0], h * w, heads * d)
    out = out @ layer.out_proj.kernel.numpy() + layer.out_proj.bias.numpy()
    return out.reshape(x.shape[0], h, w, -1)


class HarnessTest(layer_test_harness.LayerTestCase):
    """Every Transformer layer through the shared harness."""

    def test_relative_attention(self):
        self.run_layer_test(
            coatnet_tf.RelativeAttention,
            dict(hidden_size=16, head_size=8, grid_size=(3, 4)),
            (2, 3, 4, 12),
            (2, 3, 4, 16),
            run_xla=True,
        )

    def test_feed_forward(self):
        self.run_layer_test(
            coatnet_tf.FeedForward,
            dict(hidden_size=8, expansion=4),
            (2, 3, 4, 8),
            (2, 3, 4, 8),
        )

    @parameterized.named_parameters(
        ("stride1", 16, 1, (2, 3, 5, 16), (3, 5), (2, 3, 5, 16)),
        ("stride1_new_width", 32, 1, (2, 3, 5, 16), (3, 5), (2, 3, 5, 32)),
        ("stride2_new_width", 32, 2, (2, 6, 4, 16), (3, 2), (2, 3, 2, 32)),
    )
    def test_transformer_block(self, width, stride, in_shape, grid, out_shape):
        self.run_layer_test(
            coatnet_tf.TransformerBlock,
            dict(
                hidden_size=width,
                head_size=8,
                grid_size=grid,
                stride=stride,
                drop_path_rate=0.2,
            ),
            in_shape,
            out_shape,
            call_kwargs=dict(training=False),
            run_xla=True,
        )


class RelativeAttentionTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters((2, 3), (3, 3), (1, 4))
    def test_matches_eq3(self, h, w):
        layer = coatnet_tf.RelativeAttention(12, 4, (h, w))
        x = tf.random.stateless_normal([2, h, w, 6], seed=[h, w])
        layer(x)
        layer.relative_position_bias.assign(
            tf.random.stateless_normal(
                layer.relative_position_bias.shape, seed=[7, 7]
            )
        )
        self.assertAllClose(layer(x), reference_attention(layer, x), atol=1e-5)

    def test_table_per_head_and_shape(self):
        layer = coatnet_tf.RelativeAttention(64, 32, (14, 14))
        layer(tf.zeros([1, 14, 14, 48]))
        self.assertEqual(layer.relative_position_bias.shape, (2, 27, 27))
        self.assertTrue(layer.relative_position_bias.trainable)
        self.assertEqual(layer.bias().shape, (2, 196, 196))

    def test_gradient_reaches_the_table(self):
        layer = coatnet_tf.RelativeAttention(8, 4, (2, 3))
        x = tf.random.stateless_normal([2, 2, 3, 8], seed=[3, 3])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x)))
        grad = tape.gradient(loss, layer.relative_position_bias)
        self.assertIsNotNone(grad)
        grad = tf.convert_to_tensor(grad).numpy()
        self.assertEqual(grad.shape, (2, 3, 5))
        self.assertTrue(np.all(grad != 0.0))

    def test_translation_equivariant_bias(self):
        layer = coatnet_tf.RelativeAttention(8, 4, (3, 4))
        layer(tf.zeros([1, 3, 4, 8]))
        layer.relative_position_bias.assign(
            tf.random.stateless_normal([2, 5, 7], seed=[5, 5])
        )
        bias = layer.bias().numpy()
        positions = [(r, c) for r in range(3) for c in range(4)]
        seen = {}
        for i, (ri, ci) in enumerate(positions):
            for j, (rj, cj) in enumerate(positions):
                key = (ri - rj, ci - cj)
                if key in seen:
                    self.assertAllEqual(bias[:, i, j], seen[key])
                seen[key] = bias[:, i, j]
        self.assertLen(seen, 5 * 7)

    def test_float32_bias_and_softmax_under_bf16(self):
        tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            layer = coatnet_tf.RelativeAttention(8, 4, (2, 2))
            y = layer(tf.ones([1, 2, 2, 8]))
        finally:
            tf_keras.mixed_precision.set_global_policy("float32")
        self.assertEqual(y.dtype, tf.bfloat16)
        self.assertEqual(layer.relative_position_bias.dtype, tf.float32)
        self.assertEqual(layer.bias().dtype, tf.float32)
        graph = (
            tf.function(lambda t: layer(t), autograph=False)
            .get_concrete_function(tf.TensorSpec([1, 2, 2, 8], tf.bfloat16))
            .graph
        )
        softmax = [op for op in graph.get_operations() if op.type == "Softmax"]
        self.assertLen(softmax, 1)
        self.assertEqual(softmax[0].outputs[0].dtype, tf.float32)

    def test_wrong_grid_raises(self):
        layer = coatnet_tf.RelativeAttention(8, 4, (2, 2))
        with self.assertRaisesRegex(ValueError, "2x2 grid"):
            layer(tf.zeros([1, 3, 3, 8]))


class TransformerBlockTest(tf.test.TestCase):
    def test_matches_eq4(self):
        block = coatnet_tf.TransformerBlock(16, 8, (2, 3), stride=2)
        x = tf.random.stateless_normal([2, 4, 6, 8], seed=[9, 9])
        y = block(x, training=False)
        # x <- Proj(Pool(x)) + Attention(Pool(Norm(x))), then the FFN.
        pool = lambda t: tf.nn.max_pool2d(t, 2, 2, "VALID")  # noqa: E731
        shortcut = block.shortcut_proj(pool(x))
        x1 = shortcut + block.attention(pool(block.attn_norm(x)))
        expected = x1 + block.ffn(block.ffn_norm(x1))
        self.assertAllClose(y, expected, atol=1e-5)
        self.assertEqual(block.attention.grid_size, (2, 3))

    def test_plain_block_has_identity_shortcut(self):
        block = coatnet_tf.TransformerBlock(8, 4, (2, 2))
        x = tf.random.stateless_normal([1, 2, 2, 8], seed=[2, 9])
        y = block(x, training=False)
        self.assertIsNone(block.shortcut_proj)
        x1 = x + block.attention(block.attn_norm(x))
        self.assertAllClose(y, x1 + block.ffn(block.ffn_norm(x1)), atol=1e-5)


if __name__ == "__main__":
    tf.test.main()
