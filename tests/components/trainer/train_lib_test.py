"""End-to-end Trainer runs in process: the artifact, warm start, EMA, resume."""

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf

import configs
from artifacts import model as model_io
from components import base
from components.trainer import component as component_lib
from components.trainer import fingerprint
from tests.components.trainer import testdata


def _events(folder):
    """{tag: [(step, value)]} from the TensorBoard files under `folder`."""
    out = {}
    for name in tf.io.gfile.listdir(folder):
        path = os.path.join(folder, name)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalar = float(tf.make_ndarray(value.tensor))
                out.setdefault(value.tag, []).append((event.step, scalar))
    return out


def _weights(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith("model/") and k.endswith("VARIABLE_VALUE")
    }


class TrainerRunTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(
            prefix="train_lib_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        cls.examples = testdata.write_examples(
            os.path.join(cls.root, "colors"),
            splits={"train": 64, "validation": 16},
        )
        cls.config = base.apply_overrides(
            configs.get_config("tiny"),
            {
                "train_steps": 12,
                "runtime.log_every_steps": 4,
                "runtime.checkpoint_every_steps": 6,
                # Several steps per call; the loop still stops at every
                # log and checkpoint boundary.
                "runtime.steps_per_execution": 5,
                "augment.randaug_layers": 0,
            },
        )

    def _train(self, name, config, base_model=None):
        inputs = {"examples": self.examples}
        if base_model is not None:
            inputs["base_model"] = base_model
        uri = os.path.join(self.root, name)
        outputs = base.execute(
            component_lib.Trainer(), inputs, {"model": uri}, config
        )
        return outputs["model"]

    def test_artifact_then_warm_start_with_ema(self):
        first = self._train("first", self.config)
        uri = first.uri
        for path in (
            model_io.MODEL_SPEC_FILE,
            model_io.LABELS_FILE,
            base.ARTIFACT_FILE,
            base.EXECUTION_FILE,
            "checkpoints/ckpt-6.index",
            "checkpoints/ckpt-12.index",
            "weights/model.index",
        ):
            self.assertTrue(tf.io.gfile.exists(os.path.join(uri, path)), path)
        self.assertEqual(first.properties["step"], 12)
        self.assertEqual(first.properties["init"], "random")
        self.assertIn("accuracy", first.properties["eval"])
        train = _events(os.path.join(uri, "logs", "train"))
        for tag in (
            "loss",
            "accuracy",
            "learning_rate",
            "images_per_sec",
            "step_time",
            "grad_norm",
        ):
            self.assertEqual([s for s, _ in train[tag]], [4, 8, 12], tag)
        self.assertIn(
            "accuracy", _events(os.path.join(uri, "logs", "validation"))
        )
        # The Model artifact loads as the Evaluator and Exporter load it.
        model, spec, labels = model_io.load_model(uri)
        self.assertEqual((spec.variant, spec.image_size), ("coatnet-tiny", 32))
        self.assertEqual(labels, list(testdata.COLORS))
        self.assertEqual(model(tf.zeros([2, 32, 32, 3])).shape, (2, 4))
        # Without an EMA the served weights are the last checkpoint's.
        served = _weights(os.path.join(uri, "weights", "model"))
        last = _weights(os.path.join(uri, "checkpoints", "ckpt-12"))
        for key, value in served.items():
            self.assertAllEqual(value, last[key], msg=key)

        # Warm start from it with an EMA, checkpointing every step so the
        # average can be recomputed from the raw weights.
        decay, steps = 0.5, 4
        config = base.apply_overrides(
            self.config,
            {
                "train_steps": steps,
                "optimizer.ema_decay": decay,
                "runtime.checkpoint_every_steps": 1,
                "runtime.keep_checkpoints": 10,
            },
        )
        second = self._train("second", config, base_model=first)
        self.assertStartsWith(second.properties["init"], "finetune from")
        self.assertTrue(second.properties["ema"])
        ckpt = os.path.join(second.uri, "checkpoints", "ckpt-{}")
        raw = [served] + [_weights(ckpt.format(k)) for k in range(1, 5)]
        ema = _weights(os.path.join(second.uri, "weights", "model"))
        for key, value in ema.items():
            if "/moving_" in key:
                # BatchNorm statistics are not averaged: the last ones.
                self.assertAllEqual(value, raw[-1][key], msg=key)
                continue
            # The average starts at the warm-start weights (not at a random
            # init) and follows a <- d a + (1 - d) w after every step.
            want = raw[0][key]
            for k in range(1, steps + 1):
                want = decay * want + (1 - decay) * raw[k][key]
            self.assertAllClose(value, want, rtol=1e-5, atol=1e-6, msg=key)
        changed = [
            k
            for k in ema
            if "/moving_" not in k and not np.allclose(ema[k], raw[-1][k])
        ]
        self.assertNotEmpty(changed)

    def test_resume_continues_from_the_latest_checkpoint(self):
        config = base.apply_overrides(
            self.config, {"train_steps": 6, "data.eval_split": ""}
        )
        first = self._train("resume", config)
        self.assertEqual(first.properties["step"], 6)
        again = self._train("resume", config)
        # Already done: nothing trains, the model is written again.
        self.assertEqual(again.properties["start_step"], 6)
        self.assertEqual(again.properties["step"], 6)
        longer = self._train(
            "resume", dataclasses.replace(config, train_steps=8)
        )
        self.assertEqual(longer.properties["start_step"], 6)
        self.assertEqual(longer.properties["step"], 8)
        self.assertStartsWith(longer.properties["init"], "resumed from")
        self.assertEqual(
            tf.train.latest_checkpoint(os.path.join(longer.uri, "checkpoints")),
            os.path.join(longer.uri, "checkpoints", "ckpt-8"),
        )
        # The input position of every checkpoint was saved with it.
        self.assertTrue(
            tf.io.gfile.exists(
                os.path.join(longer.uri, "checkpoints/input-0/ckpt-8.index")
            )
        )

    def test_refuses_to_resume_another_runs_checkpoints(self):
        config = base.apply_overrides(
            self.config, {"train_steps": 2, "data.eval_split": ""}
        )
        self._train("other_run", config)
        changed = base.apply_overrides(
            config,
            {"optimizer.learning_rate": 1e-4, "model.drop_path_rate": 0.1},
        )
        with self.assertRaises(fingerprint.RunMismatchError) as caught:
            self._train("other_run", changed)
        message = str(caught.exception)
        # Says what differs, from what to what, and what to do.
        self.assertIn(
            "config.optimizer.learning_rate: 0.003 -> 0.0001", message
        )
        self.assertIn(
            "model_spec.overrides.drop_path_rate: 0.0 -> 0.1", message
        )
        self.assertIn("--output", message)
        self.assertNotIn("train_steps", message)
        other = testdata.write_examples(
            os.path.join(self.root, "other_colors"),
            splits={"train": 32},
            seed=1,
        )
        with self.assertRaisesRegex(fingerprint.RunMismatchError, "examples"):
            base.execute(
                component_lib.Trainer(),
                {"examples": other},
                {"model": os.path.join(self.root, "other_run")},
                config,
            )
        # Checkpoints without a recorded fingerprint are not resumed either.
        tf.io.gfile.remove(
            os.path.join(
                self.root, "other_run", "checkpoints", fingerprint.FILE
            )
        )
        with self.assertRaisesRegex(fingerprint.RunMismatchError, "no run_"):
            self._train("other_run", config)

    def test_multi_label_sigmoid_with_negative_head_bias(self):
        examples = testdata.write_examples(
            os.path.join(self.root, "multi"),
            splits={"train": 32, "validation": 8},
            multi_label=True,
            with_scores=True,
        )
        config = dataclasses.replace(self.config, train_steps=4)
        uri = os.path.join(self.root, "multi_model")
        outputs = base.execute(
            component_lib.Trainer(),
            {"examples": examples},
            {"model": uri},
            config,
        )
        spec = model_io.read_spec(uri)
        self.assertTrue(spec.multi_label)
        self.assertEqual(spec.overrides["head_init_bias"], -10.0)
        metrics = outputs["model"].properties["eval"]
        self.assertTrue(np.isfinite(metrics["loss"]))
        self.assertBetween(metrics["accuracy"], 0.0, 1.0)


if __name__ == "__main__":
    tf.test.main()
