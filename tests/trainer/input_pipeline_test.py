"""Tests for the trainer's tf.data pipelines over an Examples artifact."""

import dataclasses
import hashlib
import os
import tempfile

import numpy as np
import tensorflow as tf

import configs
from components import base
from components.trainer import config as config_lib
from components.trainer import input_pipeline
from tests.trainer import testdata

PLAIN = config_lib.AugmentConfig(
    inception_crop=False, flip=False, randaug_layers=0, mixup_alpha=0.0
)


def _ctx(pipelines=1, index=0, replicas=1):
    return tf.distribute.InputContext(
        num_input_pipelines=pipelines,
        input_pipeline_id=index,
        num_replicas_in_sync=replicas,
    )


def _digest(image):
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


class InputPipelineTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = tempfile.mkdtemp(
            prefix="input_pipeline_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        cls.colors = input_pipeline.read_examples_info(
            testdata.write_examples(
                os.path.join(root, "colors"),
                splits={"train": 40, "validation": 13},
            )
        )
        cls.one_shard = input_pipeline.read_examples_info(
            testdata.write_examples(
                os.path.join(root, "one_shard"),
                splits={"train": 8, "validation": 11},
                num_shards=1,
            )
        )
        cls.multi = input_pipeline.read_examples_info(
            testdata.write_examples(
                os.path.join(root, "multi"),
                splits={"train": 24},
                multi_label=True,
                with_scores=True,
                compression="GZIP",
            )
        )
        cls.config = dataclasses.replace(
            configs.get_config("tiny"), batch_size=8, eval_batch_size=4
        )

    def test_artifact_facts(self):
        self.assertEqual(self.colors.num_classes, 4)
        self.assertEqual(self.colors.labels[:2], ("red", "green"))
        self.assertEqual(self.colors.num_examples["validation"], 13)
        self.assertEqual(self.multi.compression, "GZIP")
        self.assertTrue(self.multi.multi_label)
        with self.assertRaisesRegex(Exception, "no split 'test'"):
            self.colors.split_files("test")

    def test_train_batches_have_static_shapes(self):
        ds = input_pipeline.train_dataset(
            self.colors, self.config, _ctx(replicas=2), 32, sigmoid=False
        )
        images, targets = ds.element_spec
        # Per-replica batch: the global 8 over 2 replicas.
        self.assertEqual(images.shape, (4, 32, 32, 3))
        self.assertEqual(targets.shape, (4, 4))
        for images, targets in ds.take(3):
            self.assertEqual(images.shape, (4, 32, 32, 3))
            # Smoothed one-hot rows (ls 0.1 over 4 classes).
            self.assertAllClose(tf.reduce_sum(targets, -1), tf.ones([4]))
            self.assertAllClose(tf.reduce_max(targets, -1), [0.925] * 4)

    def test_mixup_batches(self):
        config = dataclasses.replace(
            self.config, augment=dataclasses.replace(PLAIN, mixup_alpha=0.8)
        )
        ds = input_pipeline.train_dataset(
            self.colors, config, _ctx(), 32, sigmoid=False
        )
        self.assertEqual(ds.element_spec[1].shape, (8, 4))
        _, targets = next(iter(ds))
        self.assertAllClose(tf.reduce_sum(targets, -1), tf.ones([8]))

    def test_gzip_multi_label_with_scores(self):
        config = dataclasses.replace(
            self.config,
            augment=PLAIN,
            loss=config_lib.LossConfig(label_smoothing=0.0),
        )
        ds = input_pipeline.train_dataset(
            self.multi, config, _ctx(), 32, sigmoid=True
        )
        _, targets = next(iter(ds))
        targets = targets.numpy()
        # Two labels per image, scored 1.0 and 0.5 by the generator.
        self.assertAllEqual((targets > 0).sum(-1), [2] * 8)
        self.assertAllClose(np.sort(targets, -1)[:, -2:], [[0.5, 1.0]] * 8)

    def test_mixup_refuses_multi_label(self):
        with self.assertRaisesRegex(ValueError, "single-label"):
            input_pipeline.train_dataset(
                self.multi,
                base.apply_overrides(self.config, {"augment.mixup_alpha": 0.8}),
                _ctx(),
                32,
                sigmoid=True,
            )

    def _eval_digests(self, info, pipelines, global_batch):
        n = info.num_examples["validation"]
        steps = -(-n // global_batch)
        digests, weight_sum, batches = [], 0.0, 0
        for index in range(pipelines):
            ds = input_pipeline.eval_dataset(
                info,
                self.config,
                _ctx(pipelines, index, replicas=pipelines),
                32,
                global_batch,
                steps,
            )
            self.assertEqual(
                ds.element_spec[0].shape, (global_batch // pipelines, 32, 32, 3)
            )
            for images, _, weights in ds:
                batches += 1
                weight_sum += float(tf.reduce_sum(weights))
                digests += [
                    _digest(im) for im, w in zip(images, weights) if w > 0
                ]
        # Every pipeline delivers the same number of batches (no replica
        # waits for another), and every example counts exactly once.
        self.assertEqual(batches, steps * pipelines)
        self.assertEqual(weight_sum, n)
        return digests

    def test_eval_covers_each_example_once_across_pipelines(self):
        for info in (self.colors, self.one_shard):
            # Two files over two pipelines shard files; one file over two
            # pipelines shards records.
            alone = self._eval_digests(info, 1, 4)
            split = self._eval_digests(info, 2, 4)
            self.assertLen(set(alone), info.num_examples["validation"])
            self.assertCountEqual(split, alone)

    def test_train_pipelines_read_disjoint_shards(self):
        # No record shuffle and in-order reads: the first 20 draws are one
        # epoch of the pipeline's shard.
        config = base.apply_overrides(
            dataclasses.replace(self.config, augment=PLAIN, deterministic=True),
            {"data.shuffle_buffer_size": 1},
        )
        seen = []
        for index in range(2):
            ds = input_pipeline.train_dataset(
                self.colors, config, _ctx(2, index, 2), 32, sigmoid=False
            )
            digests = set()
            # 20 examples per pipeline; 5 batches of 4 see all of them.
            for images, _ in ds.take(5):
                digests.update(_digest(im) for im in images)
            seen.append(digests)
        self.assertLen(seen[0], 20)
        self.assertLen(seen[1], 20)
        self.assertEmpty(seen[0] & seen[1])

    def test_deterministic_resume_replays_the_stream(self):
        config = dataclasses.replace(
            self.config, augment=PLAIN, deterministic=True
        )
        ctx = _ctx(replicas=2)  # Two per-replica batches per step.
        fresh = input_pipeline.train_dataset(
            self.colors, config, ctx, 32, sigmoid=False
        )
        batches = [b for b, _ in fresh.take(8)]
        resumed = input_pipeline.train_dataset(
            self.colors, config, ctx, 32, sigmoid=False, start_step=3
        )
        for want, (got, _) in zip(batches[6:], resumed.take(2)):
            self.assertAllEqual(got, want)

    def test_plain_resume_reshuffles(self):
        config = dataclasses.replace(self.config, augment=PLAIN)
        first = input_pipeline.train_dataset(
            self.colors, config, _ctx(), 32, sigmoid=False
        )
        resumed = input_pipeline.train_dataset(
            self.colors, config, _ctx(), 32, sigmoid=False, start_step=3
        )
        a, _ = next(iter(first))
        b, _ = next(iter(resumed))
        self.assertNotAllClose(a, b)


if __name__ == "__main__":
    tf.test.main()
