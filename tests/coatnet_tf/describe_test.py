"""`coatnet_tf.describe` and its CLI."""

import contextlib
import io
import json

import tensorflow as tf
from absl import app
from absl.testing import flagsaver

import coatnet_tf
from coatnet_tf import describe_main
from coatnet_tf.describe import describe


class DescribeTest(tf.test.TestCase):
    def test_tiny_at_two_resolutions(self):
        small = describe("coatnet-tiny", 10, 32, flops=True)
        large = describe("coatnet-tiny", 10, 64)
        # coatnet-tiny: heads = width / head size 16: 64 / 16 and 128 / 16.
        self.assertEqual(
            [s.get("bias_table") for s in small["stages"]],
            [None, None, [4, 3, 3], [8, 1, 1]],
        )
        self.assertEqual(
            [s.get("bias_table") for s in large["stages"]],
            [None, None, [4, 7, 7], [8, 3, 3]],
        )
        self.assertEqual(
            [s["output_stride"] for s in small["stages"]], [4, 8, 16, 32]
        )
        self.assertEqual(large["stages"][-1]["grid"], [2, 2])
        # Only the bias tables grow with the resolution: 2 blocks in S3,
        # 1 in S4, one table per block.
        self.assertEqual(
            large["params"] - small["params"],
            2 * 4 * (49 - 9) + 1 * 8 * (9 - 1),
        )
        model = coatnet_tf.create_model("coatnet-tiny", 10, 32)
        model(tf.zeros([1, 32, 32, 3]))
        self.assertEqual(small["params"], model.count_params())
        self.assertEqual(
            small["forward_mult_adds"], coatnet_tf.forward_flops(model) // 2
        )
        self.assertNotIn("forward_mult_adds", large)
        json.dumps(small)  # JSON-ready.

    def test_cli(self):
        out = io.StringIO()
        with flagsaver.flagsaver(
            variant="coatnet-tiny", num_classes=5, image_size=32
        ):
            with contextlib.redirect_stdout(out):
                describe_main.main(["describe"])
        printed = json.loads(out.getvalue())
        self.assertEqual(printed["config"]["num_classes"], 5)
        with flagsaver.flagsaver(variant="coatnet-99"):
            with self.assertRaisesRegex(app.UsageError, "--variant"):
                describe_main.main(["describe"])


if __name__ == "__main__":
    tf.test.main()
