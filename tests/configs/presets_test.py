"""Every stage of every real preset resolves to the paper's Table 10.

The expected values are the paper's (App. A.2, Table 10), one dict per
column, named as the paper names them; a slash-separated cell becomes a
per-variant dict. Each preset stage names the column it follows, and is
resolved the way the pipeline binaries resolve it (the preset, then the
--variant the user gives), for every model size the column lists.
"""

import math

import tensorflow as tf

from components.trainer import config as trainer_config
from configs import presets, tpu_topologies
from pipeline import config as config_lib

_I1K_SD = {
    "coatnet-0": 0.2,
    "coatnet-1": 0.3,
    "coatnet-2": 0.5,
    "coatnet-3": 0.7,
}
_I21K_SD = {"coatnet-2": 0.3, "coatnet-3": 0.5, "coatnet-4": 0.7}
_JFT_SD = {"coatnet-3": 0.0, "coatnet-4": 0.1, "coatnet-5": 0.0}

# Table 10. "warmup": ("steps", n) or ("epochs", n) or None; "randaug":
# (layers, magnitude) or None; "mixup"/"ema": None for "None".
TABLE_10 = {
    "1K pre-train": {
        "variants": ["coatnet-0", "coatnet-1", "coatnet-2", "coatnet-3"],
        "stochastic_depth": _I1K_SD,
        "randaug": (2, 15),
        "mixup": 0.8,
        "loss": "softmax",
        "label_smoothing": 0.1,
        "epochs": 300,
        "batch": 4096,
        "peak_lr": 1e-3,
        "min_lr": 1e-5,
        "warmup": ("steps", 10_000),
        "decay": "cosine",
        "weight_decay": 0.05,
        "clip": 1.0,
        "ema": None,
        "resolution": 224,
    },
    # RandAugment "None/None/2,5": (2, 5) only for CoAtNet-4's PT-RA
    # runs; the column's plain CoAtNet-4 row trains without it.
    "21K pre-train": {
        "variants": ["coatnet-2", "coatnet-3", "coatnet-4"],
        "stochastic_depth": _I21K_SD,
        "randaug": None,
        "mixup": None,
        "loss": "sigmoid",
        "label_smoothing": 1e-4,
        "epochs": 90,
        "batch": 4096,
        "peak_lr": 1e-3,
        "min_lr": 1e-5,
        "warmup": ("epochs", 5),
        "decay": "linear",
        "weight_decay": 0.01,
        "clip": 1.0,
        "ema": None,
        "resolution": 224,
    },
    # Stochastic depth and RandAugment: "same" (merged cells).
    "21K->1K fine-tune": {
        "variants": ["coatnet-2", "coatnet-3", "coatnet-4"],
        "stochastic_depth": _I21K_SD,
        "randaug": None,
        "mixup": None,
        "loss": "softmax",
        "label_smoothing": 0.1,
        "epochs": 30,
        "batch": 1024,
        "peak_lr": 5e-5,
        "min_lr": 5e-5,
        "warmup": None,
        "decay": None,
        "weight_decay": 1e-8,
        "clip": 1.0,
        "ema": 0.9999,
        "resolution": 384,
    },
    "JFT pre-train": {
        "variants": ["coatnet-3", "coatnet-4", "coatnet-5"],
        "stochastic_depth": _JFT_SD,
        "randaug": (2, 5),
        "mixup": None,
        "loss": "sigmoid",
        "label_smoothing": 1e-4,
        "epochs": 14,
        "batch": 4096,
        "peak_lr": {"coatnet-3": 1e-3, "coatnet-4": 5e-4, "coatnet-5": 5e-4},
        "min_lr": 1e-5,
        "warmup": ("steps", 20_000),
        "decay": "linear",
        "weight_decay": 0.01,
        "clip": 1.0,
        "ema": None,
        "resolution": 224,
    },
    "JFT->1K fine-tune": {
        "variants": ["coatnet-3", "coatnet-4", "coatnet-5"],
        "stochastic_depth": {
            "coatnet-3": 0.1,
            "coatnet-4": 0.3,
            "coatnet-5": 0.2,
        },
        "randaug": (2, 5),
        "mixup": None,
        "loss": "softmax",
        "label_smoothing": 0.1,
        "epochs": 30,
        "batch": 512,
        "peak_lr": 5e-5,
        "min_lr": 5e-5,
        "warmup": None,
        "decay": None,
        "weight_decay": 1e-8,
        "clip": 1.0,
        "ema": 0.9999,
        "resolution": 384,
    },
}

# What each real preset's stages follow.
EXPECTED_COLUMNS = {
    ("i21k_to_i1k", "pretrain"): "21K pre-train",
    ("i21k_to_i1k", "finetune"): "21K->1K fine-tune",
    ("i1k", "pretrain"): "1K pre-train",
    ("jft_to_i1k", "pretrain"): "JFT pre-train",
    ("jft_to_i1k", "finetune"): "JFT->1K fine-tune",
}


def _per_variant(value, variant):
    return value[variant] if isinstance(value, dict) else value


def _actual(trainer: trainer_config.TrainerConfig) -> dict:
    """The Table 10 rows as the resolved trainer config gives them."""
    schedule = trainer.schedule
    if schedule.warmup_steps > 0:
        warmup = ("steps", schedule.warmup_steps)
    elif schedule.warmup_epochs > 0:
        warmup = ("epochs", schedule.warmup_epochs)
    else:
        warmup = None
    augment = trainer.augment
    randaug = None
    if augment.randaug_layers > 0:
        randaug = (augment.randaug_layers, augment.randaug_magnitude)
    rates = trainer_config.model_overrides(
        trainer, sigmoid=trainer.loss.kind == "sigmoid"
    )
    return {
        "stochastic_depth": rates["drop_path_rate"],
        "randaug": randaug,
        "mixup": augment.mixup_alpha or None,
        "loss": trainer.loss.kind,
        "label_smoothing": trainer.loss.label_smoothing,
        "epochs": trainer.train_epochs if trainer.train_steps <= 0 else None,
        "batch": trainer.batch_size,
        "peak_lr": trainer.optimizer.learning_rate,
        "min_lr": (
            trainer.optimizer.learning_rate
            if schedule.decay == "constant"
            else schedule.end_learning_rate
        ),
        "warmup": warmup,
        "decay": None if schedule.decay == "constant" else schedule.decay,
        "weight_decay": trainer.optimizer.weight_decay,
        "clip": trainer.optimizer.clip_norm,
        "ema": trainer.optimizer.ema_decay or None,
        "resolution": trainer.model.image_size,
    }


class PresetsTable10Test(tf.test.TestCase):
    def test_every_real_stage_names_its_column(self):
        found = {}
        for name in presets.list_presets():
            for stage, spec in presets.get_preset(name)["stages"].items():
                if spec["paper_column"]:
                    found[(name, stage)] = spec["paper_column"]
        self.assertEqual(found, EXPECTED_COLUMNS)

    def test_every_stage_resolves_to_table_10(self):
        checked = 0
        for (name, stage), column in EXPECTED_COLUMNS.items():
            paper = TABLE_10[column]
            for variant in paper["variants"]:
                config = config_lib.preset_config(
                    name,
                    {
                        "pretrain.model.variant": variant,
                        "finetune.model.variant": variant,
                    },
                )
                actual = _actual(getattr(config, stage))
                for row, expected in paper.items():
                    if row == "variants":
                        continue
                    expected = _per_variant(expected, variant)
                    where = f"{name}.{stage} {variant}: Table 10 {column!r}"
                    got = actual[row]
                    if isinstance(expected, float) and got is not None:
                        self.assertTrue(
                            math.isclose(got, expected, rel_tol=1e-9),
                            f"{where}, {row}: {got} != {expected}",
                        )
                    else:
                        self.assertEqual(got, expected, f"{where}, {row}")
                    checked += 1
        # 5 stages x 3-4 variants x 15 rows.
        self.assertEqual(checked, 15 * (3 + 3 + 4 + 3 + 3))

    def test_user_values_beat_per_variant_ones(self):
        config = config_lib.preset_config(
            "jft_to_i1k",
            {
                "pretrain.model.variant": "coatnet-4",
                "pretrain.optimizer.learning_rate": "2e-4",
            },
        )
        self.assertEqual(config.pretrain.optimizer.learning_rate, 2e-4)

    def test_real_presets_gate_on_floor_and_baseline(self):
        for name in ("i21k_to_i1k", "i1k", "jft_to_i1k"):
            config = config_lib.preset_config(name)
            served = (
                config.finetune_evaluator
                if config.run_finetune
                else config.evaluator
            )
            kinds = sorted(
                "change" if t.is_change else "floor" for t in served.thresholds
            )
            self.assertEqual(kinds, ["change", "floor"], name)
            change = [t for t in served.thresholds if t.is_change][0]
            self.assertLess(change.absolute, 0)
            self.assertGreater(change.absolute, -0.02)
            self.assertFalse(config.demo, name)

    def test_demo_is_the_default_preset(self):
        self.assertEqual(presets.DEFAULT, "demo")
        config = config_lib.demo_config()
        self.assertEqual(config.preset, "demo")
        self.assertTrue(config.demo)
        self.assertEqual(config.pretrain.model.variant, "coatnet-tiny")
        self.assertEqual(config.finetune.model.image_size, 64)

    def test_malformed_presets_are_refused_on_load(self):
        good = presets.PRESETS["i1k"]
        cases = {
            "unknown keys": {**good, "stagez": {}},
            "is not one of": {
                **good,
                "stages": {"pretrain": {"recipe": "pretrain_i2k"}},
            },
            "datasets.pretrain": {**good, "datasets": {"pretrain": "mnist"}},
            "defines none": {
                **good,
                "pipeline": {**good["pipeline"], "run_finetune": True},
            },
        }
        for message, preset in cases.items():
            with self.assertRaisesRegex(ValueError, message):
                presets.validate("broken", preset)
        with self.assertRaisesRegex(ValueError, "i21k_to_i1k"):
            presets.get_preset("i21k")

    def test_bad_override_names_preset_and_field(self):
        with self.assertRaisesRegex(ValueError, "no_such_field"):
            config_lib.preset_config("i1k", {"pretrain.model.no_such_field": 1})


class TopologiesTest(tf.test.TestCase):
    def test_named_slices(self):
        # name: (chips, replicas, hosts, peak TFLOP/s per chip)
        expected = {
            "v2-8": (4, 8, 1, 45.0),
            "v3-8": (4, 8, 1, 123.0),
            "v3-32": (16, 32, 4, 123.0),
            "v4-8": (4, 4, 1, 275.0),
            "v4-64": (32, 32, 8, 275.0),
            "v5e-8": (8, 8, 1, 197.0),
            "v5litepod-16": (16, 16, 4, 197.0),
            "v5p-128": (64, 64, 16, 459.0),
        }
        for name, (chips, replicas, hosts, peak) in expected.items():
            t = tpu_topologies.parse(name)
            self.assertEqual(
                (t.chips, t.replicas, t.hosts, t.peak_tflops_per_chip),
                (chips, replicas, hosts, peak),
                name,
            )
        self.assertEqual(tpu_topologies.parse("v3-32").peak_flops, 16 * 123e12)

    def test_bad_names(self):
        for name in ("v3", "v9-8", "v3-3", "tpu-32"):
            with self.assertRaisesRegex(ValueError, "--tpu_topology"):
                tpu_topologies.parse(name)


if __name__ == "__main__":
    tf.test.main()
