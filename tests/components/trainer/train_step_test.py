"""The train step compiles with XLA on CPU (the stand-in for TPU) and runs
in mixed_bfloat16."""

import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras

import configs
from components import base
from components.trainer import input_pipeline, train_lib
from tests.components.trainer import testdata


class TrainStepTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(
            prefix="train_step_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        cls.info = input_pipeline.read_examples_info(
            testdata.write_examples(
                os.path.join(cls.root, "colors"),
                splits={"train": 32, "validation": 8},
            )
        )

    def _trainer(self, name, **overrides):
        config = base.apply_overrides(
            configs.get_config("tiny"),
            {
                "train_steps": 3,
                "batch_size": 8,
                "augment.randaug_layers": 0,
                "optimizer.ema_decay": 0.9,
                **overrides,
            },
        )
        trainer = train_lib.Trainer(
            config,
            self.info,
            os.path.join(self.root, name),
            tf.distribute.get_strategy(),
        )
        trainer.initialize()
        return trainer

    def test_whole_step_is_one_xla_program(self):
        trainer = self._trainer("xla", **{"runtime.jit_compile": True})
        iterator = trainer.train_iterator()
        before = [v.numpy() for v in trainer.model.trainable_variables]
        trainer.run_steps(iterator, 3)
        # Forward, backward, clipping, AdamW and the EMA update lower to
        # one HLO module (no op fell back outside the cluster).
        images, targets = next(iterator)
        hlo = trainer.replica_step.experimental_get_compiler_ir(
            images, targets
        )(stage="hlo")
        self.assertIn("ENTRY", hlo)
        self.assertEqual(trainer.step, 3)
        loss = float(trainer.metrics["loss"].result())
        self.assertTrue(np.isfinite(loss))
        after = [v.numpy() for v in trainer.model.trainable_variables]
        moved = sum(not np.allclose(a, b) for a, b in zip(before, after))
        self.assertGreater(moved, len(before) // 2)

    def test_mixed_bfloat16_step(self):
        trainer = self._trainer(
            "bf16", **{"runtime.precision": "mixed_bfloat16"}
        )
        self.assertEqual(trainer.model.compute_dtype, "bfloat16")
        self.assertEqual(trainer.model.trainable_variables[0].dtype, tf.float32)
        logits = trainer.model(tf.zeros([2, 32, 32, 3]), training=False)
        self.assertEqual(logits.dtype, tf.float32)
        trainer.run_steps(trainer.train_iterator(), 3)
        self.assertTrue(np.isfinite(float(trainer.metrics["loss"].result())))
        # The global policy is left as it was for models built later.
        self.assertEqual(
            tf_keras.mixed_precision.global_policy().name, "float32"
        )


if __name__ == "__main__":
    tf.test.main()
