"""Tests for the relative position index, lookup and bias-table resize."""

import itertools

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import coatnet_tf

# The 3x3 grid worked out by hand: positions 1..9 row-major, entry (i, j) =
# (r_i - r_j + 2) * 5 + (c_i - c_j + 2).
HAND_WORKED_3X3 = np.array(
    [
        [12, 11, 10, 7, 6, 5, 2, 1, 0],
        [13, 12, 11, 8, 7, 6, 3, 2, 1],
        [14, 13, 12, 9, 8, 7, 4, 3, 2],
        [17, 16, 15, 12, 11, 10, 7, 6, 5],
        [18, 17, 16, 13, 12, 11, 8, 7, 6],
        [19, 18, 17, 14, 13, 12, 9, 8, 7],
        [22, 21, 20, 17, 16, 15, 12, 11, 10],
        [23, 22, 21, 18, 17, 16, 13, 12, 11],
        [24, 23, 22, 19, 18, 17, 14, 13, 12],
    ]
)


def brute_force_index(height, width):
    positions = [(r, c) for r in range(height) for c in range(width)]
    n = len(positions)
    index = np.zeros([n, n], np.int64)
    for i, (ri, ci) in enumerate(positions):
        for j, (rj, cj) in enumerate(positions):
            index[i, j] = (ri - rj + height - 1) * (2 * width - 1) + (
                ci - cj + width - 1
            )
    return index


def half_pixel_bilinear(table, rows, cols):
    """Independent NumPy bilinear resize with half-pixel centres."""

    def weights(n_in, n_out):
        w = np.zeros([n_out, n_in])
        for o in range(n_out):
            src = (o + 0.5) * n_in / n_out - 0.5
            src = min(max(src, 0.0), n_in - 1)
            lo = int(np.floor(src))
            hi = min(lo + 1, n_in - 1)
            w[o, lo] += 1.0 - (src - lo)
            w[o, hi] += src - lo
        return w

    wr = weights(table.shape[1], rows)
    wc = weights(table.shape[2], cols)
    return np.einsum("ri,hij,cj->hrc", wr, table, wc)


class RelativePositionIndexTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (1, 1), (3, 3), (2, 5), (5, 2), (4, 3), (7, 7), (1, 4)
    )
    def test_matches_brute_force(self, height, width):
        index = coatnet_tf.relative_position_index(height, width)
        self.assertEqual(index.dtype, np.int32)
        self.assertEqual(index.shape, (height * width, height * width))
        self.assertAllEqual(index, brute_force_index(height, width))

    def test_hand_worked_3x3(self):
        self.assertAllEqual(
            coatnet_tf.relative_position_index(3, 3), HAND_WORKED_3X3
        )

    @parameterized.parameters((4, 3), (2, 5))
    def test_range_and_diagonal(self, height, width):
        index = coatnet_tf.relative_position_index(height, width)
        table_size = (2 * height - 1) * (2 * width - 1)
        # Every offset is used and the zero offset is the table's centre.
        self.assertAllEqual(np.unique(index), np.arange(table_size))
        centre = (height - 1) * (2 * width - 1) + width - 1
        self.assertAllEqual(np.diag(index), np.full(height * width, centre))

    def test_invalid_grid(self):
        with self.assertRaises(ValueError):
            coatnet_tf.relative_position_index(0, 3)


class RelativeBiasLookupTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters((3, 3), (2, 5), (4, 3))
    def test_translation_equivariance(self, height, width):
        heads = 2
        table = tf.random.stateless_normal(
            [heads, 2 * height - 1, 2 * width - 1], seed=[1, 2]
        )
        index = coatnet_tf.relative_position_index(height, width)
        bias = coatnet_tf.relative_position_bias(table, index).numpy()
        self.assertEqual(bias.shape, (heads, height * width, height * width))
        positions = list(itertools.product(range(height), range(width)))
        by_offset = {}
        for i, (ri, ci) in enumerate(positions):
            for j, (rj, cj) in enumerate(positions):
                offset = (ri - rj, ci - cj)
                by_offset.setdefault(offset, []).append(bias[:, i, j])
                # Eq. 3 / App. A.1: P[i - i' + H, j - j' + W], 1-based.
                self.assertAllEqual(
                    bias[:, i, j],
                    table.numpy()[
                        :, offset[0] + height - 1, offset[1] + width - 1
                    ],
                )
        # The bias depends on the offset only.
        for values in by_offset.values():
            for v in values[1:]:
                self.assertAllEqual(v, values[0])

    def test_gradient_is_scatter_add(self):
        table = tf.Variable(tf.zeros([1, 3, 3]))
        index = coatnet_tf.relative_position_index(2, 2)
        with tf.GradientTape() as tape:
            bias = coatnet_tf.relative_position_bias(table, index)
            loss = tf.reduce_sum(bias)
        grad = tf.convert_to_tensor(tape.gradient(loss, table)).numpy()
        # Each offset's gradient counts the (query, key) pairs that use it.
        counts = np.bincount(index.reshape(-1), minlength=9).reshape(1, 3, 3)
        self.assertAllEqual(grad, counts)


class ResizeTest(tf.test.TestCase, parameterized.TestCase):
    def test_identity_at_same_size(self):
        table = np.random.RandomState(0).randn(4, 27, 27).astype(np.float32)
        self.assertIs(
            coatnet_tf.resize_relative_position_bias(table, 14, 14), table
        )
        tensor = tf.constant(table[:, :13, :5])
        self.assertIs(
            coatnet_tf.resize_relative_position_bias(tensor, 7, 3), tensor
        )

    @parameterized.parameters("coatnet-0", "coatnet-3", "coatnet-5")
    def test_224_to_384_every_transformer_stage(self, name):
        src = coatnet_tf.get_config(name, image_size=224)
        dst = coatnet_tf.get_config(name, image_size=384)
        expected = {(14, 14): (24, 24), (7, 7): (12, 12)}
        for stage, (h, w), (big_h, big_w) in zip(
            src.stages, src.stage_grids(), dst.stage_grids()
        ):
            if stage.kind != "transformer":
                continue
            self.assertEqual(expected[(h, w)], (big_h, big_w))
            heads = stage.width // src.head_size
            table = tf.zeros([heads, 2 * h - 1, 2 * w - 1])
            resized = coatnet_tf.resize_relative_position_bias(
                table, big_h, big_w
            )
            self.assertEqual(
                resized.shape, (heads, 2 * big_h - 1, 2 * big_w - 1)
            )
        # 14 -> 24 tokens: 27 -> 47; 7 -> 12: 13 -> 23.
        self.assertEqual(
            coatnet_tf.resize_relative_position_bias(
                tf.zeros([1, 27, 27]), 24, 24
            ).shape,
            (1, 47, 47),
        )
        self.assertEqual(
            coatnet_tf.resize_relative_position_bias(
                tf.zeros([1, 13, 13]), 12, 12
            ).shape,
            (1, 23, 23),
        )

    def test_half_pixel_bilinear_offsets(self):
        # Fill S3's table with its row offset and read which source offset
        # each target offset lands on after 27 -> 47 (224 -> 384).
        offsets = np.arange(27, dtype=np.float32) - 13
        table = np.broadcast_to(offsets[None, :, None], (2, 27, 27))
        resized = coatnet_tf.resize_relative_position_bias(table, 24, 24)
        column = resized.numpy()[0, :, 5]
        centre = 23
        self.assertAllClose(resized[0], resized[1])
        self.assertAllClose(resized[0, :, 0], resized[0, :, 46])
        self.assertAllClose(column[centre], 0.0, atol=1e-6)
        self.assertAllClose(column[centre + 1], 0.574, atol=5e-4)
        # Half-pixel centres: target row 24 samples source row
        # (24 + 0.5) * 27 / 47 - 0.5 = 13.574, i.e. offset 0.574.
        self.assertAllClose(
            column[centre + 1], (24 + 0.5) * 27 / 47 - 0.5 - 13, atol=1e-5
        )
        self.assertAllClose(column[centre + 2], 1.149, atol=5e-4)
        self.assertAllClose(column[centre + 5], 2.872, atol=5e-4)
        self.assertAllClose(column[centre + 12], 6.894, atol=5e-4)
        self.assertAllClose(column[centre + 23], 13.0, atol=1e-6)
        self.assertAllClose(column[centre - 1], -column[centre + 1], atol=1e-6)

    @parameterized.parameters(
        ((3, 9, 3), (4, 2)),  # 5x2 grid -> 4x2
        ((2, 3, 9), (4, 7)),  # 2x5 -> 4x7
        ((2, 7, 5), (2, 3)),  # 4x3 -> 2x3, a downsize
        ((1, 13, 13), (12, 12)),
    )
    def test_matches_numpy_bilinear(self, shape, target):
        table = np.random.RandomState(3).randn(*shape).astype(np.float32)
        resized = coatnet_tf.resize_relative_position_bias(table, *target)
        rows, cols = 2 * target[0] - 1, 2 * target[1] - 1
        self.assertEqual(resized.shape, (shape[0], rows, cols))
        self.assertAllClose(
            resized, half_pixel_bilinear(table, rows, cols), atol=1e-5
        )

    def test_keeps_dtype(self):
        table = tf.cast(tf.ones([2, 3, 3]), tf.bfloat16)
        resized = coatnet_tf.resize_relative_position_bias(table, 3, 3)
        self.assertEqual(resized.dtype, tf.bfloat16)
        self.assertAllClose(tf.cast(resized, tf.float32), tf.ones([2, 5, 5]))

    def test_rejects_even_tables(self):
        with self.assertRaises(ValueError):
            coatnet_tf.resize_relative_position_bias(tf.zeros([2, 4, 5]), 3, 3)

    def test_grid_size_is_exact(self):
        # 18x18 tokens (288 px): int(18 / (288 / 224)) floors to 13, the
        # table shape gives 18 exactly.
        self.assertEqual(coatnet_tf.grid_size([4, 35, 35]), (18, 18))
        self.assertEqual(coatnet_tf.grid_size((2, 27, 13)), (14, 7))
        self.assertEqual(coatnet_tf.grid_size([1, 1, 1]), (1, 1))
        with self.assertRaises(ValueError):
            coatnet_tf.grid_size([4, 26, 27])


if __name__ == "__main__":
    tf.test.main()
