"""FLOPs at 224 measured on the traced graph, against the paper."""

import tensorflow as tf
from absl import logging
from absl.testing import parameterized

import coatnet_tf

# Table 4: FLOPs at 224, as multiply-adds.
PAPER_MULTIPLY_ADDS = {
    "coatnet-0": 4.2e9,
    "coatnet-1": 8.4e9,
    "coatnet-2": 15.7e9,
    "coatnet-3": 34.7e9,
}


class FlopsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*PAPER_MULTIPLY_ADDS)
    def test_within_five_percent_of_paper(self, name):
        model = coatnet_tf.create_model(name, 1000, 224)
        multiply_adds = coatnet_tf.forward_flops(model) / 2
        logging.info("%s: %.4g multiply-adds at 224", name, multiply_adds)
        paper = PAPER_MULTIPLY_ADDS[name]
        self.assertBetween(multiply_adds, 0.95 * paper, 1.05 * paper)

    def test_counts_the_model_ops(self):
        model = coatnet_tf.create_model("coatnet-tiny", 10, 64)
        by_op = coatnet_tf.forward_flops_by_op(model)
        # Convolutions, dense layers and attention matmuls all count.
        for op in (
            "Conv2D",
            "DepthwiseConv2dNative",
            "MatMul",
            "BatchMatMulV2",
        ):
            self.assertGreater(by_op.get(op, 0), 0, op)
        total = coatnet_tf.forward_flops(model)
        self.assertEqual(sum(by_op.values()), total)
        # Affine in the batch size: per-image work scales, while the
        # relative-bias lookup is done once per call, whatever the batch.
        f2 = coatnet_tf.forward_flops(model, batch_size=2)
        f3 = coatnet_tf.forward_flops(model, batch_size=3)
        self.assertEqual(f3 - f2, f2 - total)
        self.assertGreater(f2 - total, 0.9 * total)


if __name__ == "__main__":
    tf.test.main()
