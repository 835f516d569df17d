"""`bench/matmul_forms.py`: its forms compute one layer, and its report.

Figures are not judged (a test cannot time a shared machine); that every
form computes the same x W + b (so the benchmark compares like with like)
and the report's shape and arithmetic are.
"""

import tensorflow as tf

from bench import matmul_forms
from tests.bench import run


class MatmulFormsTest(tf.test.TestCase):
    def test_forms_compute_the_same_layer(self):
        for dtype, tolerance in ((tf.float32, 1e-5), (tf.bfloat16, 0.05)):
            fns = matmul_forms._functions(tf, dtype, 8, 16, 32)
            self.assertCountEqual(fns, matmul_forms.FORMS)
            out = {
                k: float(tf.cast(fn()[0], tf.float32)) for k, fn in fns.items()
            }
            linear = out["matmul_bias"]
            self.assertNotEqual(linear, out["matmul"])  # The bias is added.
            self.assertAllClose(out["conv1x1_bias"], linear, rtol=tolerance)
            self.assertAllClose(
                out["batch_matmul_bias"], linear, rtol=tolerance
            )
            gelu = float(tf.nn.gelu(tf.constant(linear), approximate=False))
            self.assertAllClose(
                out["matmul_bias_gelu"], gelu, rtol=tolerance, atol=tolerance
            )
            self.assertAllClose(
                out["matmul_bias_gelu_const_weights"],
                out["matmul_bias_gelu"],
                rtol=tolerance,
                atol=tolerance,
            )

    def test_report(self):
        report = run.run_bench(
            "bench.matmul_forms",
            "--rows=512",
            "--depth=32",
            "--width=64",
            "--rounds=2",
            "--calls=1",
        )
        self.assertIn(report["cpu"]["bf16_isa"], ("amx", "avx512_bf16", "none"))
        self.assertEqual(
            report["shape"], {"rows": 512, "depth": 32, "width": 64}
        )
        self.assertCountEqual(report["forms"], matmul_forms.FORMS)
        flops = 2.0 * 512 * 32 * 64
        for entry in report["forms"].values():
            for dtype in ("float32", "bfloat16"):
                ms = entry[dtype]["ms"]
                self.assertGreater(ms, 0)
                self.assertAllClose(entry[dtype]["gflops"], flops / ms / 1e6)
            self.assertAllClose(
                entry["bfloat16_speedup"],
                entry["float32"]["ms"] / entry["bfloat16"]["ms"],
            )


if __name__ == "__main__":
    tf.test.main()
