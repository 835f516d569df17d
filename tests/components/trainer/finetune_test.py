"""Pretrain coatnet-tiny at 32 px, then finetune it at 64 px.

The paper's protocol at toy scale: the relative bias tables are resized
once at restore (coatnet_tf), every other weight is taken over as stored;
the classifier is taken from the matching source rows when the new labels
are a subset of the old ones (1K inside 21K), and is new otherwise.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

import coatnet_tf
import configs
from artifacts import model as model_io
from components import base
from components.trainer import component as component_lib
from components.trainer import finetune, input_pipeline, train_lib
from tests.components.trainer import testdata


class HeadRowsTest(tf.test.TestCase):
    def test_modes(self):
        source = ["n01", "n02", "n03", "n04"]
        self.assertEqual(
            finetune.head_rows(["n03", "n01"], source, "auto"), [2, 0]
        )
        self.assertEqual(
            finetune.head_rows(["n03", "n01"], source, "match"), [2, 0]
        )
        self.assertIsNone(finetune.head_rows(["n03", "x"], source, "auto"))
        self.assertIsNone(finetune.head_rows(["n03"], source, "none"))
        self.assertIsNone(finetune.head_rows(["n03"], None, "auto"))
        with self.assertRaisesRegex(ValueError, "1 labels are not among"):
            finetune.head_rows(["n03", "x"], source, "match")
        with self.assertRaisesRegex(ValueError, "labels.txt"):
            finetune.head_rows(["n03"], None, "match")


class FinetuneTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(
            prefix="finetune_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        examples = testdata.write_examples(
            os.path.join(cls.root, "colors"),
            splits={"train": 64, "validation": 16},
        )
        config = base.apply_overrides(
            configs.get_config("tiny"),
            {"train_steps": 20, "data.eval_split": ""},
        )
        cls.pretrained = base.execute(
            component_lib.Trainer(),
            {"examples": examples},
            {"model": os.path.join(cls.root, "pretrained")},
            config,
        )["model"]
        cls.source, _, _ = model_io.load_model(cls.pretrained.uri)
        cls.finetune = base.apply_overrides(
            configs.get_config("tiny"),
            {
                "model.image_size": 64,
                "train_steps": 40,
                "runtime.checkpoint_every_steps": 40,
            },
        )

    def _trainer(self, name, examples):
        trainer = train_lib.Trainer(
            self.finetune,
            input_pipeline.read_examples_info(examples),
            os.path.join(self.root, name),
            tf.distribute.get_strategy(),
            base_model=self.pretrained,
        )
        trainer.initialize()
        return trainer

    def _assert_resized_and_restored(self, model):
        source_layers = self.source.attention_layers()
        target_layers = model.attention_layers()
        self.assertLen(target_layers, len(source_layers))
        for src, dst in zip(source_layers, target_layers):
            # 32 px: S3 2x2 and S4 1x1 tokens; 64 px: 4x4 and 2x2.
            self.assertEqual(dst.grid_size, tuple(2 * s for s in src.grid_size))
            want = coatnet_tf.resize_relative_position_bias(
                src.relative_position_bias, *dst.grid_size
            )
            self.assertEqual(
                dst.relative_position_bias.shape,
                (src.relative_position_bias.shape[0],)
                + tuple(2 * g - 1 for g in dst.grid_size),
            )
            self.assertAllClose(dst.relative_position_bias, want)
        tables = {id(layer.relative_position_bias) for layer in target_layers}
        classifier = {id(model.classifier.kernel), id(model.classifier.bias)}
        pairs = list(zip(self.source.variables, model.variables))
        self.assertLen(pairs, len(model.variables))
        for src, dst in pairs:
            if id(dst) not in tables | classifier:
                self.assertAllEqual(src, dst, msg=dst.name)

    def test_subset_labels_take_the_matching_head_rows(self):
        examples = testdata.write_examples(
            os.path.join(self.root, "subset"),
            classes=("blue", "red"),
            splits={"train": 16, "validation": 8},
        )
        trainer = self._trainer("subset", examples)
        self.assertLen(trainer.restore_report.resized, 3)
        self._assert_resized_and_restored(trainer.model)
        rows = [list(testdata.COLORS).index(c) for c in ("blue", "red")]
        source = self.source.classifier
        self.assertAllEqual(
            trainer.model.classifier.kernel,
            tf.gather(source.kernel, rows, axis=1),
        )
        self.assertAllEqual(
            trainer.model.classifier.bias, tf.gather(source.bias, rows)
        )

    def test_new_label_space_trains_at_the_higher_resolution(self):
        examples = testdata.write_examples(
            os.path.join(self.root, "new"),
            classes=("cyan", "magenta"),
            splits={"train": 64, "validation": 32},
        )
        trainer = self._trainer("new", examples)
        report = trainer.restore_report
        self.assertLen(report.resized, 3)
        self.assertLen(report.reinitialized, 2)  # Classifier kernel, bias.
        self._assert_resized_and_restored(trainer.model)
        before = trainer.evaluate()
        # A new zero-initialized classifier scores every class alike.
        self.assertAllClose(before["accuracy"], 0.5)
        result = trainer.train()
        self.assertEqual(result.step, 40)
        losses = [r["loss"] for r in result.history]
        self.assertTrue(np.all(np.isfinite(losses)), msg=losses)
        # The logged training losses are 10-step means over augmented
        # batches and move by +-0.1 between windows, so the trend is judged
        # on the fixed evaluation split: from ln 2 (every class alike) to
        # well below it.
        self.assertLess(result.eval_metrics["loss"], 0.5 * before["loss"])
        self.assertGreaterEqual(result.eval_metrics["accuracy"], 0.9)


if __name__ == "__main__":
    tf.test.main()
