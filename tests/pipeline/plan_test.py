"""`//pipeline:plan`: its numbers, its refusals, and a quiet console.

The i21k_to_i1k numbers are checked against the arithmetic written out
here from the published dataset sizes, Table 10's batches and epochs, and
the v3-32 slice (16 chips of 123 bf16 TFLOP/s, 32 replicas, 4 hosts).
"""

import math
import os
import subprocess
import sys
from unittest import mock

import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from configs import tpu_topologies
from pipeline import config as config_lib
from pipeline import flags_lib, plan_checks, plan_lib

FLAGS = flags.FLAGS

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
# Lines TensorFlow prints at start-up or on deprecated calls.
_CHATTER = (
    "oneDNN",
    "cuda",
    "cuInit",
    "cpu_feature_guard",
    "deprecat",
    "Instructions for updating",
    "absl::InitializeLog",
)


def _i21k(**overrides):
    return config_lib.preset_config(
        "i21k_to_i1k",
        {
            "data.input": "/data/i21k/{SPAN}",
            "finetune_data.input": "/data/i1k/train",
            "finetune_data.validation_input": "/data/i1k/val",
            "pretrain.model.variant": "coatnet-2",
            "finetune.model.variant": "coatnet-2",
            **overrides,
        },
    )


def _run(binary: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=_ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, os.path.join(_ROOT, "pipeline", binary), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


class PlanNumbersTest(tf.test.TestCase):
    def test_i21k_to_i1k_coatnet2_on_v3_32(self):
        topology = tpu_topologies.parse("v3-32")
        plan = plan_lib.make_plan(
            _i21k(), ["pretrain", "finetune"], topology, utilization=0.4
        )
        self.assertEqual(plan["problems"], [])
        pre, fine = plan["stages"]
        peak = 16 * 123e12 * 0.4  # FLOP/s the slice sustains

        # Pretraining: winter21's 13,153,500 images in 19,167 classes, 50
        # per class held out; 90 epochs at 4096, 5 warmup epochs.
        train = 13_153_500 - 50 * 19_167
        self.assertEqual(train, 12_195_150)
        self.assertEqual(pre["examples"], train)
        self.assertEqual(pre["validation_examples"], 958_350)
        self.assertEqual(pre["classes"], 19_167)
        steps = math.ceil(90 * 12_195_150 / 4096)
        self.assertEqual(steps, 267_960)
        self.assertEqual(pre["steps"], steps)
        self.assertEqual(pre["warmup_steps"], math.ceil(5 * 12_195_150 / 4096))
        self.assertEqual(pre["warmup_steps"], 14_887)
        self.assertAlmostEqual(pre["epochs"], steps * 4096 / train)
        self.assertEqual(pre["images_seen"], 267_960 * 4096)
        self.assertEqual(pre["per_replica_batch"], 4096 / 32)
        self.assertEqual(pre["per_host_batch"], 4096 / 4)
        # The paper: CoAtNet-2 at 224 is 15.7B multiply-adds (1K head;
        # the 19,167-class head adds 1024 x 18,167 more).
        macs = pre["forward_flops_per_image"] / 2
        self.assertAlmostEqual(macs / 15.7e9, 1.0, delta=0.03)
        step_s = 3 * pre["forward_flops_per_image"] * 4096 / peak
        self.assertAlmostEqual(pre["step_seconds"], step_s)
        self.assertAlmostEqual(pre["host_images_per_second"], 1024 / step_s)
        stored = 256 * (256 * 4 / 3) * 1.0  # q95 JPEG, 4:3, 1 B/pixel
        self.assertAlmostEqual(pre["bytes_per_example"], stored)
        self.assertAlmostEqual(
            pre["host_bytes_per_second"], 1024 / step_s * stored
        )
        self.assertEqual(pre["shards"], 4096)
        self.assertAlmostEqual(pre["bytes_per_shard"], train * stored / 4096)
        self.assertAlmostEqual(pre["hours"], 267_960 * step_s / 3600)
        counted = plan_lib.counted_model("coatnet-2", 224, 19_167)
        ck = pre["checkpoint"]
        self.assertEqual(ck["weights_bytes"], 4 * counted["params"])
        self.assertEqual(
            ck["optimizer_slot_bytes"], 2 * 4 * counted["trainable_params"]
        )
        self.assertEqual(ck["ema_bytes"], 0)  # No EMA in pretraining.
        self.assertEqual(ck["count"], math.ceil(267_960 / 1000))
        self.assertAlmostEqual(ck["every_minutes"], 1000 * step_s / 60)

        # Finetuning: ImageNet-1K's 1,281,167 images, 30 epochs at 1024,
        # no warmup, at 384 with a 1K head; EMA weights are saved too.
        self.assertEqual(fine["examples"], 1_281_167)
        self.assertEqual(fine["validation_examples"], 50_000)
        self.assertEqual(fine["steps"], math.ceil(30 * 1_281_167 / 1024))
        self.assertEqual(fine["steps"], 37_535)
        self.assertEqual(fine["warmup_steps"], 0)
        self.assertEqual(fine["per_replica_batch"], 1024 / 32)
        self.assertEqual(fine["per_host_batch"], 1024 / 4)
        # The paper: CoAtNet-2 at 384 is 49.8B multiply-adds.
        macs = fine["forward_flops_per_image"] / 2
        self.assertAlmostEqual(macs / 49.8e9, 1.0, delta=0.03)
        fine_step_s = 3 * fine["forward_flops_per_image"] * 1024 / peak
        self.assertAlmostEqual(fine["step_seconds"], fine_step_s)
        self.assertAlmostEqual(fine["bytes_per_example"], 110_000)
        fck = fine["checkpoint"]
        self.assertEqual(fck["ema_bytes"], fck["weights_bytes"])
        self.assertAlmostEqual(
            plan["hours"],
            (267_960 * step_s + 37_535 * fine_step_s) / 3600,
        )
        text = plan_lib.format_text(plan)
        self.assertIn("267,960 (14,887 warmup) = 90.00 epochs", text)
        self.assertIn("128 per replica, 1024 per host", text)

    def test_expected_examples_and_diff(self):
        config = _i21k(**{"pretrain.batch_size": 2048})
        plan = plan_lib.make_plan(
            config, ["pretrain"], expected={"pretrain": 1_000_000}
        )
        stage = plan["stages"][0]
        self.assertEqual(stage["examples"], 1_000_000)
        self.assertEqual(stage["steps"], math.ceil(90 * 1_000_000 / 2048))
        self.assertNotIn("step_seconds", stage)  # No topology given.
        diff = {d["field"]: d for d in plan["diff"]}
        self.assertEqual(diff["pretrain.batch_size"]["value"], 2048)
        self.assertEqual(diff["pretrain.batch_size"]["preset"], 4096)
        self.assertNotIn("pretrain.loss.kind", diff)


class PlanChecksTest(tf.test.TestCase):
    def test_384_on_256_names_both_flags(self):
        config = _i21k(**{"finetune_data.resize_shorter_side": 256})
        (message,) = plan_checks.problems(config, ["pretrain", "finetune"])
        self.assertIn("--set=finetune_data.resize_shorter_side", message)
        self.assertIn("--finetune_image_size", message)
        self.assertIn("384", message)

    def test_batch_not_divisible_by_replicas(self):
        replicas = tpu_topologies.parse("v4-48").replicas  # 24
        (message,) = plan_checks.problems(_i21k(), ["pretrain"], replicas)
        self.assertIn("4096", message)
        self.assertIn("24 replicas", message)

    def test_variant_without_stochastic_depth(self):
        config = config_lib.preset_config(
            "jft_to_i1k",
            {"pretrain.model.variant": "coatnet-2", "data.input": "/x"},
        )
        (message,) = plan_checks.problems(config, ["pretrain"])
        self.assertIn("--variant", message)
        self.assertIn("drop_path_rate", message)

    def test_float32_on_tpu(self):
        config = _i21k(**{"pretrain.runtime.precision": "float32"})
        self.assertEqual(plan_checks.problems(config, ["pretrain"]), [])
        (message,) = plan_checks.problems(config, ["pretrain"], on_tpu=True)
        self.assertIn("--set=pretrain.runtime.precision", message)
        self.assertIn("--strategy", message)

    def test_finetune_classes_missing_from_pretrain_labels(self):
        tmp = self.create_tempdir()
        pre = tmp.create_file("i21k.txt", "n01 a\nn02 b\nn03 c\n")
        ok = tmp.create_file("ok.txt", "n01\nn03\n")
        bad = tmp.create_file("bad.txt", "n01\nn09\n")
        config = _i21k(**{"data.synsets": pre.full_path})
        for synsets, expected in ((ok, 0), (bad, 1)):
            found = plan_checks.problems(
                config_lib.apply(
                    config, {"finetune_data.synsets": synsets.full_path}
                ),
                ["finetune"],
            )
            self.assertLen(found, expected)
        self.assertIn("n09", found[0])
        self.assertIn("head_rows", found[0])
        relaxed = config_lib.apply(
            config,
            {
                "finetune_data.synsets": bad.full_path,
                "finetune.finetune.head_rows": "auto",
            },
        )
        self.assertEqual(plan_checks.problems(relaxed, ["finetune"]), [])


class FlagsTest(tf.test.TestCase):
    def _config(self, *argv):
        with flagsaver.flagsaver():
            FLAGS.unparse_flags()
            FLAGS(["pretrain", *argv])
            return flags_lib.config_from_flags()

    def test_no_flags_is_still_the_demo(self):
        root = self.create_tempdir().full_path
        with mock.patch.dict(os.environ, {"COATNET_HOME": root}):
            config = self._config()
        self.assertEqual(config, config_lib.demo_config())

    def test_old_root_spelling_and_config_file_base(self):
        tmp = self.create_tempdir()
        path = tmp.create_file(
            "run.json",
            '{"base": "i1k", "pretrain": {"batch_size": 1024}}',
        ).full_path
        config = self._config(
            f"--config_file={path}",
            "--input=/data/i1k/train",
            f"--pipeline_root={tmp.full_path}/root",
            "--set=pretrain.batch_size=2048",
        )
        self.assertEqual(config.preset, "i1k")
        self.assertEqual(config.pipeline_root, f"{tmp.full_path}/root")
        self.assertEqual(config.pretrain.batch_size, 2048)  # --set wins.
        self.assertFalse(config.demo)
        with self.assertRaisesRegex(ValueError, "name one preset"):
            self._config(f"--config_file={path}", "--preset=i21k_to_i1k")

    def test_blessing_floor_and_margin_flags(self):
        config = self._config(
            "--preset=i21k_to_i1k",
            "--input=/data/i21k",
            "--finetune_input=/data/i1k",
            "--bless_floor=0.85",
            "--bless_margin=0.002",
        )
        gates = {
            "change" if t.is_change else "floor": t
            for t in config.finetune_evaluator.thresholds
        }
        self.assertEqual(gates["floor"].metric, "top1")
        self.assertEqual(gates["floor"].lower_bound, 0.85)
        self.assertEqual(gates["change"].absolute, -0.002)
        # The pretraining gate is not the served one: unchanged.
        self.assertEqual(
            config.evaluator,
            config_lib.preset_config("i21k_to_i1k").evaluator,
        )


class BinariesTest(tf.test.TestCase):
    def test_plan_refuses_384_on_256_with_a_quiet_console(self):
        proc = _run(
            "plan.py",
            "--preset=i21k_to_i1k",
            "--input=/data/i21k",
            "--finetune_input=/data/i1k/train",
            "--set=finetune_data.validation_input=/data/i1k/val",
            "--set=finetune_data.resize_shorter_side=256",
            f"--output={self.create_tempdir().full_path}",
        )
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("--set=finetune_data.resize_shorter_side", proc.stderr)
        self.assertIn("--finetune_image_size", proc.stderr)
        self.assertNotIn("needs", proc.stderr)  # Only that refusal.
        console = proc.stdout + proc.stderr
        for word in _CHATTER:
            self.assertNotIn(word.lower(), console.lower(), console)

    def test_input_without_preset_exits_2_listing_presets(self):
        proc = _run(
            "pretrain.py",
            "--input=/data/i21k/{SPAN}",
            "--variant=coatnet-2",
            f"--output={self.create_tempdir().full_path}",
        )
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("needs --preset=NAME", proc.stderr)
        for name in ("demo", "i21k_to_i1k", "i1k", "jft_to_i1k"):
            self.assertIn(name, proc.stderr)


if __name__ == "__main__":
    tf.test.main()
