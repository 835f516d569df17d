"""Tests for restoring checkpoints across resolutions and class counts."""

import os

import numpy as np
import tensorflow as tf
import tf_keras

import coatnet_tf


def build(name="coatnet-tiny", num_classes=10, size=32, **overrides):
    model = coatnet_tf.create_model(name, num_classes, size, **overrides)
    model(tf.zeros([1, *model.config.image_size, 3]), training=False)
    return model


def randomize(model, seed=0):
    """Random values everywhere, so equal-after-restore means restored."""
    for i, var in enumerate(model.variables):
        var.assign(tf.random.stateless_uniform(var.shape, [seed, i], 0.5, 1.5))


def tables(model):
    return [a.relative_position_bias.numpy() for a in model.attention_layers()]


class RestoreTest(tf.test.TestCase):
    def save(self, model, name="ckpt", **extra):
        prefix = os.path.join(self.get_temp_dir(), name, "model")
        return tf.train.Checkpoint(model=model, **extra).write(prefix)

    def assert_non_table_weights_equal(self, source, target):
        source_tables = {
            id(a.relative_position_bias) for a in source.attention_layers()
        }
        pairs = [
            (a, b)
            for a, b in zip(source.variables, target.variables)
            if id(a) not in source_tables
        ]
        self.assertNotEmpty(pairs)
        for a, b in pairs:
            self.assertEqual(a.name.split("/", 1)[1], b.name.split("/", 1)[1])
            self.assertAllEqual(a, b)

    def test_higher_resolution(self):
        source = build(size=32)
        randomize(source)
        path = self.save(source)
        target = build(size=64)
        report = coatnet_tf.restore_from_checkpoint(target, path)

        self.assert_non_table_weights_equal(source, target)
        grids = [(4, 4), (4, 4), (2, 2)]  # S3 twice, S4 once, at 64 px.
        for stored, restored, grid in zip(
            tables(source), tables(target), grids
        ):
            expected = coatnet_tf.resize_relative_position_bias(stored, *grid)
            self.assertEqual(
                restored.shape[1:], (7, 7) if grid[0] == 4 else (3, 3)
            )
            self.assertAllClose(restored, expected, atol=1e-6)
        self.assertLen(report.resized, 3)
        self.assertEqual(report.resized[0][1:], ((4, 3, 3), (4, 7, 7)))
        self.assertEqual(report.resized[2][1:], ((8, 1, 1), (8, 3, 3)))
        self.assertEmpty(report.reinitialized)
        self.assertLen(report.restored, len(target.variables) - 3)
        # The restored model computes.
        logits = target(tf.ones([2, 64, 64, 3]))
        self.assertTrue(np.all(np.isfinite(logits.numpy())))

    def test_lower_and_non_square_resolution(self):
        source = build(size=64)
        randomize(source, seed=1)
        path = self.save(source)
        target = build(size=(64, 32))
        report = coatnet_tf.restore_from_checkpoint(target, path)
        for stored, restored in zip(tables(source), tables(target)):
            grid = ((restored.shape[1] + 1) // 2, (restored.shape[2] + 1) // 2)
            self.assertAllClose(
                restored,
                coatnet_tf.resize_relative_position_bias(stored, *grid),
            )
        self.assertEqual(report.resized[0][2], (4, 7, 3))

    def test_same_resolution_restores_everything_as_is(self):
        source = build(size=32)
        randomize(source, seed=2)
        target = build(size=32)
        report = coatnet_tf.restore_from_checkpoint(target, self.save(source))
        self.assertEmpty(report.resized)
        self.assertLen(report.restored, len(target.variables))
        for a, b in zip(source.variables, target.variables):
            self.assertAllEqual(a, b)

    def test_class_count_change_reinitializes_head(self):
        source = build(num_classes=10)
        randomize(source, seed=3)
        target = build(num_classes=4, size=64, head_init_bias=-3.0)
        with self.assertLogs(level="WARNING") as logs:
            report = coatnet_tf.restore_from_checkpoint(
                target, self.save(source)
            )
        self.assertIn("Classifier re-initialized", "".join(logs.output))
        self.assertLen(report.reinitialized, 2)
        self.assertAllEqual(target.classifier.kernel, tf.zeros([128, 4]))
        self.assertAllEqual(target.classifier.bias, tf.fill([4], -3.0))
        self.assertAllEqual(
            target.head.pre_logits.kernel, source.head.pre_logits.kernel
        )

    def test_head_rows_pick_source_classes(self):
        source = build(num_classes=10)
        randomize(source, seed=4)
        target = build(num_classes=3)
        rows = [7, 0, 7]
        report = coatnet_tf.restore_from_checkpoint(
            target, self.save(source), head_rows=rows
        )
        self.assertLen(report.head_rows_from, 2)
        self.assertAllEqual(
            target.classifier.kernel,
            tf.gather(source.classifier.kernel, rows, axis=1),
        )
        self.assertAllEqual(
            target.classifier.bias, tf.gather(source.classifier.bias, rows)
        )
        with self.assertRaisesRegex(ValueError, "head_rows has 2"):
            coatnet_tf.restore_from_checkpoint(
                target, self.save(source, "b"), head_rows=[1, 2]
            )
        with self.assertRaisesRegex(ValueError, "must index"):
            coatnet_tf.restore_from_checkpoint(
                target, self.save(source, "c"), head_rows=[1, 2, 10]
            )

    def test_trainer_checkpoint_with_optimizer(self):
        source = build()
        optimizer = tf_keras.optimizers.AdamW(1e-3)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(source(tf.ones([2, 32, 32, 3]), training=True))
        grads = tape.gradient(loss, source.trainable_variables)
        optimizer.apply_gradients(zip(grads, source.trainable_variables))
        randomize(source, seed=5)
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(
                model=source, optimizer=optimizer, step=tf.Variable(3)
            ),
            os.path.join(self.get_temp_dir(), "trainer"),
            max_to_keep=1,
        )
        manager.save()
        target = build(size=64)
        # A directory resolves to its latest checkpoint; slots are ignored.
        report = coatnet_tf.restore_from_checkpoint(target, manager.directory)
        self.assertLen(report.resized, 3)
        self.assert_non_table_weights_equal(source, target)

    def test_model_io_can_read_its_own_checkpoints(self):
        # artifacts.model reads weights with assert_consumed().
        source = build()
        path = self.save(source)
        target = build()
        tf.train.Checkpoint(model=target).read(path).assert_consumed()

    def test_errors_name_checkpoint_and_variable(self):
        source = build()
        path = self.save(source)
        wider = build(pre_logits_size=64)
        with self.assertRaisesRegex(ValueError, "pre_logits.*model/head"):
            coatnet_tf.restore_from_checkpoint(wider, path)
        with self.assertRaisesRegex(ValueError, "lacks model variables"):
            coatnet_tf.restore_from_checkpoint(
                build(), self.save(build(pre_logits=False), "no_pre")
            )
        with self.assertRaisesRegex(ValueError, "variables the model lacks"):
            coatnet_tf.restore_from_checkpoint(build(pre_logits=False), path)
        with self.assertRaisesRegex(ValueError, "no `model`"):
            prefix = os.path.join(self.get_temp_dir(), "other", "x")
            coatnet_tf.restore_from_checkpoint(
                build(), tf.train.Checkpoint(net=source).write(prefix)
            )
        with self.assertRaisesRegex(ValueError, "Build the model"):
            coatnet_tf.restore_from_checkpoint(
                coatnet_tf.create_model("coatnet-tiny", 10, 32), path
            )
        with self.assertRaises(FileNotFoundError):
            coatnet_tf.restore_from_checkpoint(build(), path + "-missing")

    def test_features_only_model_drops_the_classifier(self):
        source = build()
        target = build(num_classes=0)
        report = coatnet_tf.restore_from_checkpoint(target, self.save(source))
        self.assertLen(report.dropped, 2)

    def test_nothing_assigned_on_error(self):
        source = build()
        randomize(source, seed=6)
        path = self.save(source)
        target = build(pre_logits_size=64)
        before = [v.numpy() for v in target.variables]
        with self.assertRaises(ValueError):
            coatnet_tf.restore_from_checkpoint(target, path)
        for a, b in zip(before, target.variables):
            self.assertAllEqual(a, b)


class CoAtNet0RestoreTest(tf.test.TestCase):
    def test_224_to_384(self):
        source = build("coatnet-0", 1000, 224)
        for attention in source.attention_layers():
            table = attention.relative_position_bias
            table.assign(tf.random.stateless_normal(table.shape, [8, 8]))
        prefix = os.path.join(self.get_temp_dir(), "c0", "model")
        path = tf.train.Checkpoint(model=source).write(prefix)
        target = build("coatnet-0", 1000, 384)
        report = coatnet_tf.restore_from_checkpoint(target, path)
        self.assertEqual(
            sorted({r[1:] for r in report.resized}),
            [((12, 27, 27), (12, 47, 47)), ((24, 13, 13), (24, 23, 23))],
        )
        self.assertLen(report.resized, 7)
        for stored, restored in zip(tables(source), tables(target)):
            grid = ((restored.shape[1] + 1) // 2,) * 2
            self.assertAllClose(
                restored,
                coatnet_tf.resize_relative_position_bias(stored, *grid),
            )
        stem = (source.stem.conv0.kernel, target.stem.conv0.kernel)
        self.assertAllEqual(*stem)
        for a, b in zip(source.blocks[3].variables, target.blocks[3].variables):
            self.assertAllEqual(a, b)


if __name__ == "__main__":
    tf.test.main()
