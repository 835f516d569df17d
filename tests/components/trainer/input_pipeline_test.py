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
from tests.components.trainer import testdata

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

    def _full_recipe(self, **changes):
        """Crop, flip, RandAugment, Mixup and CutMix, deterministic."""
        return dataclasses.replace(
            self.config,
            augment=dataclasses.replace(
                self.config.augment, mixup_alpha=0.8, cutmix_alpha=1.0
            ),
            deterministic=True,
            **changes,
        )

    def test_stream_is_a_function_of_the_seed(self):
        """A fresh pipeline repeats the stream; another seed changes it.

        No draw depends on process state: two pipelines built one after the
        other (as a resumed process builds its own) yield the same
        augmented, mixed batches.
        """
        config = self._full_recipe()

        def first_batches(config):
            ds = input_pipeline.train_dataset(
                self.colors, config, _ctx(replicas=2), 32, sigmoid=False
            )
            return [(x.numpy(), y.numpy()) for x, y in ds.take(3)]

        one, two = first_batches(config), first_batches(config)
        for (x1, y1), (x2, y2) in zip(one, two):
            self.assertAllEqual(x1, x2)
            self.assertAllEqual(y1, y2)
        other = first_batches(dataclasses.replace(config, seed=1))
        self.assertNotAllClose(other[0][0], one[0][0])

    def test_iterator_checkpoint_resumes_without_replay(self):
        """Saved mid-stream, restored into a new pipeline: the same batches.

        The checkpoint holds the stream's position and buffers; the keyed
        draws continue from it. Its size is the buffers': the shuffle
        buffer's encoded records and the images in flight.
        """
        config = self._full_recipe()
        ctx = _ctx(replicas=2)

        def iterator():
            return iter(
                input_pipeline.train_dataset(
                    self.colors, config, ctx, 32, sigmoid=False
                )
            )

        it = iterator()
        for _ in range(5):
            next(it)
        root = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        path = tf.train.Checkpoint(iterator=it).save(os.path.join(root, "c"))
        want = [next(it) for _ in range(4)]
        fresh = iterator()
        tf.train.Checkpoint(iterator=fresh).restore(path).assert_consumed()
        for (x, y), (wx, wy) in zip([next(fresh) for _ in range(4)], want):
            self.assertAllEqual(x, wx)
            self.assertAllEqual(y, wy)


if __name__ == "__main__":
    tf.test.main()
