"""`bench/serving_bench.py` end to end on coatnet-tiny, both precisions.

Run as its own process, as users run it. Figures are not judged (a test
cannot time a shared machine); the report's fields and their consistency
are.
"""

import tensorflow as tf

from bench import cpu
from tests.bench import run


class ServingBenchTest(tf.test.TestCase):
    def test_report(self):
        report = run.run_bench(
            "bench.serving_bench",
            "--variant=coatnet-tiny",
            "--image_size=32",
            "--num_classes=5",
            "--batch_size=4",
            "--iterations=3",
            "--latency_iterations=12",
            "--warmup_iterations=1",
            "--grpc=false",
            "--serving_precision=both",
        )
        self.assertEqual(set(report["precisions"]), {"float32", "bfloat16"})
        for precision, entry in report["precisions"].items():
            served = entry["saved_model"]
            latency = served["batch1_latency_ms"]
            self.assertEqual(latency["samples"], 12)
            self.assertGreater(latency["p50"], 0)
            self.assertLessEqual(latency["p50"], latency["p90"])
            self.assertLessEqual(latency["p90"], latency["p99"])
            serving = served["batch4_images_per_second"]
            forward = entry["model_forward"]["batch4_images_per_second"]
            self.assertGreater(forward, 0)
            self.assertAllClose(
                entry["serving_over_forward"], serving / forward, rtol=1e-2
            )
            self.assertGreater(entry["serving_over_forward_paired_median"], 0)
            self.assertNotIn("grpc_local_server", entry)
            goal = report["goals"][f"{precision}_serving_over_forward"]
            self.assertEqual(goal["target"], 0.9)
            if precision == "bfloat16" and report["cpu"]["bf16_isa"] == "none":
                self.assertIsNone(goal["met"])
                self.assertIn("not measurable on this CPU", goal["status"])
            else:
                self.assertEqual(
                    goal["met"], goal["serving_over_forward"] >= 0.9
                )
        self.assertEqual(
            report["cpu"]["bf16_isa"],
            cpu.bf16_support(report["cpu"].get("isa")),
        )


if __name__ == "__main__":
    tf.test.main()
