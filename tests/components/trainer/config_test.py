"""Tests for the Trainer config, the recipes and the CLI's config loading."""

import dataclasses
import json
import os
from unittest import mock

import tensorflow as tf

import configs
from components import base
from components.trainer import config as config_lib
from components.trainer import main as main_lib
from components.trainer import strategy as strategy_lib


class RecipesTest(tf.test.TestCase):
    def test_every_recipe_builds_and_round_trips_through_json(self):
        for name in configs.list_configs():
            config = configs.get_config(name)
            data = json.loads(json.dumps(base.config_to_json(config)))
            again = base.config_from_json(config_lib.TrainerConfig, data)
            self.assertEqual(again, config, msg=name)

    def test_table_10_values(self):
        i1k = configs.get_config("pretrain_i1k")
        self.assertEqual(i1k.batch_size, 4096)
        self.assertEqual(i1k.train_epochs, 300)
        self.assertEqual(i1k.schedule.warmup_steps, 10_000)
        self.assertEqual(i1k.schedule.decay, "cosine")
        self.assertEqual(i1k.optimizer.weight_decay, 0.05)
        self.assertEqual(
            (i1k.augment.randaug_layers, i1k.augment.randaug_magnitude),
            (2, 15),
        )
        self.assertEqual(i1k.augment.mixup_alpha, 0.8)

        i21k = configs.get_config("pretrain_i21k")
        self.assertEqual(i21k.loss.kind, "sigmoid")
        self.assertEqual(i21k.loss.label_smoothing, 1e-4)
        self.assertEqual(i21k.schedule.decay, "linear")
        self.assertEqual(i21k.schedule.warmup_epochs, 5)
        self.assertEqual(i21k.train_epochs, 90)
        self.assertEqual(i21k.optimizer.weight_decay, 0.01)
        self.assertEqual(i21k.augment.mixup_alpha, 0)

        ft = configs.get_config("finetune_i1k_384")
        self.assertEqual(ft.model.image_size, 384)
        self.assertEqual(ft.optimizer.learning_rate, 5e-5)
        self.assertEqual(ft.schedule.decay, "constant")
        self.assertEqual(ft.schedule.end_learning_rate, 5e-5)
        self.assertEqual(ft.optimizer.weight_decay, 1e-8)
        self.assertEqual(ft.optimizer.ema_decay, 0.9999)
        self.assertEqual((ft.train_epochs, ft.batch_size), (30, 1024))
        self.assertEqual(ft.loss.kind, "softmax")
        # Stochastic depth follows the 21K pretraining (merged cells).
        self.assertEqual(
            ft.model.drop_path_by_variant, i21k.model.drop_path_by_variant
        )

        jft = configs.get_config("pretrain_jft")
        self.assertEqual(jft.schedule.warmup_steps, 20_000)
        self.assertEqual(jft.train_epochs, 14)
        self.assertEqual(jft.augment.randaug_layers, 2)
        self.assertEqual(jft.augment.randaug_magnitude, 5)
        for config in (i1k, i21k, ft, jft):
            self.assertEqual(config.optimizer.clip_norm, 1.0)

    def test_unknown_recipe(self):
        with self.assertRaisesRegex(ValueError, "Unknown config 'nope'"):
            configs.get_config("nope")


class ResolveTest(tf.test.TestCase):
    def test_drop_path_follows_the_variant(self):
        config = configs.get_config("pretrain_i1k")
        for variant, rate in (("coatnet-0", 0.2), ("coatnet-3", 0.7)):
            c = base.apply_overrides(config, {"model.variant": variant})
            self.assertEqual(
                config_lib.model_overrides(c, False)["drop_path_rate"], rate
            )
        c = base.apply_overrides(config, {"model.drop_path_rate": 0.1})
        self.assertEqual(
            config_lib.model_overrides(c, False)["drop_path_rate"], 0.1
        )

    def test_overrides_refuse_fields_owned_elsewhere(self):
        # image_size has one home, model.image_size; in overrides it would
        # reach create_model twice.
        for key, hint in (
            ("image_size", "set model.image_size"),
            ("num_classes", "label count"),
        ):
            with self.assertRaisesRegex(
                ValueError, f"model.overrides may not set '{key}'.*{hint}"
            ):
                config_lib.ModelConfig(overrides={key: 32})
        model = config_lib.ModelConfig(overrides={"kernels": "reference"})
        self.assertEqual(model.overrides, {"kernels": "reference"})

    def test_head_bias_defaults_by_loss(self):
        config = configs.get_config("pretrain_i1k")
        self.assertEqual(
            config_lib.model_overrides(config, True)["head_init_bias"], -10.0
        )
        self.assertEqual(
            config_lib.model_overrides(config, False)["head_init_bias"], 0.0
        )

    def test_epochs_become_steps(self):
        config = configs.get_config("pretrain_i21k")
        steps = config_lib.resolve_steps(config, 4096 * 100)
        self.assertEqual(steps.total, 90 * 100)
        self.assertEqual(steps.warmup, 5 * 100)
        config = base.apply_overrides(config, {"train_steps": 50})
        self.assertEqual(config_lib.resolve_steps(config, 4096 * 100).total, 50)

    def test_epochs_without_split_size_fail(self):
        with self.assertRaisesRegex(ValueError, "train_steps"):
            config_lib.resolve_steps(configs.get_config("pretrain_i1k"), 0)

    def test_invalid_choices_fail(self):
        with self.assertRaisesRegex(ValueError, "runtime.strategy"):
            base.apply_overrides(
                config_lib.TrainerConfig(), {"runtime.strategy": "gpu"}
            )
        with self.assertRaisesRegex(ValueError, "schedule.decay"):
            base.apply_overrides(
                config_lib.TrainerConfig(), {"schedule.decay": "step"}
            )


class OverridesTest(tf.test.TestCase):
    def test_flag_strings_parse_to_field_types(self):
        parsed = base.parse_override_flags(
            [
                "optimizer.learning_rate=5e-5",
                "train_steps=12",
                "deterministic=true",
                "augment.crop_area_range=[0.5, 1.0]",
                "model.drop_path_rate=None",
                "runtime.tpu=local",
                'model.overrides={"gelu_approximate": true}',
            ]
        )
        config = base.apply_overrides(config_lib.TrainerConfig(), parsed)
        self.assertEqual(config.optimizer.learning_rate, 5e-5)
        self.assertEqual(config.train_steps, 12)
        self.assertIs(config.deterministic, True)
        self.assertEqual(config.augment.crop_area_range, (0.5, 1.0))
        self.assertIsNone(config.model.drop_path_rate)
        self.assertEqual(config.runtime.tpu, "local")
        self.assertEqual(config.model.overrides, {"gelu_approximate": True})
        # Untouched siblings keep their values.
        self.assertEqual(config.optimizer.weight_decay, 0.05)

    def test_bad_overrides_name_the_field(self):
        with self.assertRaisesRegex(ValueError, "no field 'lr'"):
            base.apply_overrides(
                config_lib.TrainerConfig(), {"optimizer.lr": 1}
            )
        with self.assertRaisesRegex(ValueError, "train_steps"):
            base.apply_overrides(
                config_lib.TrainerConfig(), {"train_steps": "many"}
            )
        with self.assertRaisesRegex(ValueError, "field.path=value"):
            base.parse_override_flags(["train_steps"])

    def test_cli_loads_a_json_file_on_a_recipe_then_flags(self):
        path = os.path.join(self.create_tempdir().full_path, "c.json")
        with open(path, "w") as f:
            json.dump(
                {"base": "tiny", "optimizer": {"ema_decay": 0.99}, "seed": 3},
                f,
            )
        config = main_lib.load_config(path, {"train_steps": 7})
        tiny = configs.get_config("tiny")
        self.assertEqual(config.model, tiny.model)
        self.assertEqual(config.optimizer.ema_decay, 0.99)
        self.assertEqual(config.optimizer.learning_rate, 3e-3)
        self.assertEqual((config.seed, config.train_steps), (3, 7))

    def test_cli_reloads_an_execution_record(self):
        config = dataclasses.replace(configs.get_config("tiny"), seed=11)
        path = os.path.join(self.create_tempdir().full_path, "_execution.json")
        base.write_json(
            path,
            {"component": "Trainer", "config": base.config_to_json(config)},
        )
        self.assertEqual(main_lib.load_config(path, {}), config)

    def test_one_loader_for_recipes_preset_stages_and_files(self):
        self.assertEqual(
            config_lib.load("pretrain_i21k"),
            configs.get_config("pretrain_i21k"),
        )
        stage = config_lib.load(
            "i21k_to_i1k.finetune", {"model.variant": "coatnet-3"}
        )
        self.assertEqual(stage.model.image_size, 384)
        self.assertEqual(stage.finetune.head_rows, "match")
        self.assertEqual(stage.model.variant, "coatnet-3")
        # A preset stage's per-variant values (JFT: lr 5e-4 for C-4).
        jft = config_lib.load("jft_to_i1k.pretrain", {})
        self.assertEqual(jft.optimizer.learning_rate, 1e-3)
        path = os.path.join(self.create_tempdir().full_path, "c.json")
        with open(path, "w") as f:
            json.dump({"base": "i21k_to_i1k.finetune", "batch_size": 512}, f)
        from_file = config_lib.load(path, {"train_epochs": "10"})
        self.assertEqual(from_file.finetune.head_rows, "match")
        self.assertEqual(
            (from_file.batch_size, from_file.train_epochs), (512, 10.0)
        )
        with open(path, "w") as f:
            json.dump({"base": "i21k_to_i1k.evaluate"}, f)
        with self.assertRaisesRegex(ValueError, "no 'evaluate' stage"):
            config_lib.load(path)
        with self.assertRaisesRegex(ValueError, "Unknown base 'pretrain_i2k'"):
            config_lib.load("pretrain_i2k")
        with self.assertRaisesRegex(ValueError, "neither a recipe"):
            config_lib.load(path + ".missing.json")

    def test_default_output_is_one_directory_per_run(self):
        tiny = configs.get_config("tiny")
        examples = base.Artifact(
            base.EXAMPLES, "/data/a", {"num_examples": {"train": 8}}
        )
        other_data = base.Artifact(
            base.EXAMPLES, "/data/b", {"num_examples": {"train": 8}}
        )
        home = self.create_tempdir().full_path
        self.enter_context(mock.patch.dict(os.environ, {"COATNET_HOME": home}))
        path = main_lib.default_output("tiny", tiny, examples, None)
        self.assertStartsWith(path, os.path.join(home, "trainer", "tiny-"))
        # Stable for the same run, also for settings that do not change it.
        self.assertEqual(
            main_lib.default_output(
                "tiny",
                base.apply_overrides(tiny, {"runtime.log_every_steps": 1}),
                examples,
                None,
            ),
            path,
        )
        others = {
            main_lib.default_output("tiny", tiny, other_data, None),
            main_lib.default_output(
                "tiny", dataclasses.replace(tiny, seed=1), examples, None
            ),
            main_lib.default_output(
                "tiny",
                tiny,
                examples,
                base.Artifact(base.MODEL, "/runs/pretrained"),
            ),
        }
        self.assertLen(others, 3)
        self.assertNotIn(path, others)


class BiasGradientCaveatTest(tf.test.TestCase):
    def test_only_reference_bfloat16_without_xla(self):
        caveat = strategy_lib.bias_gradient_caveat
        self.assertIn(
            "kernels='fused'",
            caveat("mixed_bfloat16", "reference", False, False),
        )
        for args in (
            ("float32", "reference", False, False),
            ("mixed_bfloat16", "fused", False, False),
            ("mixed_bfloat16", "reference", True, False),
            ("mixed_bfloat16", "reference", False, True),
        ):
            self.assertIsNone(caveat(*args), args)


if __name__ == "__main__":
    tf.test.main()
