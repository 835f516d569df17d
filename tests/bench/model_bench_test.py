"""`bench/model_bench.py` end to end on coatnet-tiny: its JSON report.

The benchmark runs as its own process, as users run it, because it sets
TensorFlow's runtime environment before importing TensorFlow. Figures are
not judged here (a test cannot time a shared machine); the report's
shape, units and internal consistency are.
"""

import itertools
import json
import os
import subprocess
import sys
import tempfile

import tensorflow as tf

from tests import child_env


def run_bench(*flags: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.model_bench", *flags],
        env=child_env.python_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode:
        raise AssertionError(f"model_bench failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout)


class ModelBenchTest(tf.test.TestCase):
    def test_report(self):
        with tempfile.TemporaryDirectory() as profile_dir:
            report = run_bench(
                "--variant=coatnet-tiny",
                "--image_size=32",
                "--batch=2",
                "--steps=1",
                "--warmup=1",
                "--rounds=2",
                "--peak_size=256",
                f"--profile_dir={profile_dir}",
            )
            self.assertNotEmpty(os.listdir(profile_dir))
        self.assertEqual(report["variant"], "coatnet-tiny")
        forward = report["flops_per_image"]["forward"]
        self.assertGreater(forward, 0)
        self.assertEqual(report["flops_per_image"]["train_step"], 3 * forward)
        for dtype in ("float32", "bfloat16"):
            self.assertGreater(report["peak_gflops"][dtype]["median"], 0)
        self.assertEqual(report["kernels"], ["fused", "reference"])
        for setting, policy, kind in itertools.product(
            ("fused", "reference"),
            ("float32", "mixed_bfloat16"),
            ("forward", "train_step"),
        ):
            entry = report[setting][policy][kind]
            ips = entry["images_per_s"]
            self.assertGreater(ips["median"], 0)
            self.assertGreaterEqual(ips["best"], ips["median"])
            # GFLOP/s = images/s x FLOPs per image.
            flops = report["flops_per_image"][kind]
            self.assertAllClose(
                entry["gflops"]["best"], ips["best"] * flops / 1e9
            )
            # A model cannot run 5x above the machine's matmul rate.
            fraction = entry["fraction_of_fp32_peak"]["median"]
            self.assertBetween(fraction, 0.0, 5.0)
            # Each round's fraction is its GFLOP/s over its own peak.
            rounds = entry["rounds"]
            self.assertLen(rounds, 2)
            fractions = [
                r["images_per_s"] * flops / 1e9 / r["peak_gflops"]["float32"]
                for r in rounds
            ]
            self.assertAllClose(
                max(fractions), entry["fraction_of_fp32_peak"]["best"]
            )
            for r in rounds:  # The mean of the two bracketing peaks.
                self.assertAllClose(
                    r["peak_gflops"]["float32"],
                    (r["peak_before"]["float32"] + r["peak_after"]["float32"])
                    / 2,
                )
            profile = entry["op_profile"]["fraction"]
            self.assertAllClose(sum(profile.values()), 1.0)
            if setting == "fused":
                speedup = entry["speedup_vs_reference"]
                self.assertAllClose(
                    speedup["median"],
                    ips["median"]
                    / report["reference"][policy][kind]["images_per_s"][
                        "median"
                    ],
                )
        fused = report["fused"]["mixed_bfloat16"]["train_step"]
        self.assertGreater(fused["speedup_vs_float32"]["median"], 0)
        self.assertNotIn(
            "speedup_vs_reference", report["reference"]["float32"]["forward"]
        )
        self.assertEqual(set(report["goals"]), {"fused", "reference"})
        goals = report["goals"]["fused"]
        self.assertEqual(
            set(goals),
            {
                "float32_train_step_fraction_of_peak",
                "float32_forward_fraction_of_peak",
                "mixed_bfloat16_forward_speedup",
                "mixed_bfloat16_train_step_speedup",
            },
        )
        fp32_goal = goals["float32_train_step_fraction_of_peak"]
        self.assertEqual(
            fp32_goal["met"], fp32_goal["median"] >= fp32_goal["target"]
        )


if __name__ == "__main__":
    tf.test.main()
