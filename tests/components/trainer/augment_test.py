"""Tests for the training preprocessing, run eagerly AND inside tf.data.

As big_vision's pp tests do: an op that works eagerly can still lose its
static shape, or behave differently, once traced into a dataset map.
"""

import numpy as np
import tensorflow as tf

from components import preprocessing
from components.trainer import augment, rng
from components.trainer import config as config_lib

KEY = tf.constant([7, 11], tf.int64)


def _jpeg(height, width, seed=0, png=False):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    encode = tf.io.encode_png if png else tf.io.encode_jpeg
    return encode(pixels).numpy()


def _in_dataset(fn, *inputs):
    """Runs `fn` on one element inside a tf.data map; returns (out, spec)."""
    ds = tf.data.Dataset.from_tensors(tuple(inputs)).map(fn)
    return next(iter(ds)), ds.element_spec


class TrainPreprocessTest(tf.test.TestCase):
    def _check(self, image_bytes, size, cfg):
        def fn(b):
            return augment.preprocess_for_train(b, size, cfg, KEY)

        eager = fn(tf.constant(image_bytes))
        graph, spec = _in_dataset(fn, image_bytes)
        for out in (eager, graph):
            self.assertEqual(out.dtype, tf.float32)
            self.assertEqual(out.shape, (size, size, 3))
            self.assertTrue(np.all(np.isfinite(out.numpy())))
            # Normalized 0..255 RGB: (x - mean) / std stays within these.
            self.assertLess(np.abs(out.numpy()).max(), 2.7)
        # The static shape survives tracing: the TPU needs it.
        self.assertEqual(spec.shape, (size, size, 3))

    def test_full_recipe_jpeg_and_png(self):
        cfg = config_lib.AugmentConfig()  # Crop, flip, RandAugment (2, 15).
        self._check(_jpeg(57, 91), 32, cfg)
        self._check(_jpeg(40, 33, png=True), 24, cfg)

    def test_without_augmentation_it_is_the_eval_transform(self):
        cfg = config_lib.AugmentConfig(
            inception_crop=False, flip=False, randaug_layers=0
        )
        data = _jpeg(50, 70, seed=3)
        self._check(data, 32, cfg)
        want = preprocessing.preprocess_for_eval(tf.constant(data), 32)
        got = augment.preprocess_for_train(tf.constant(data), 32, cfg, KEY)
        self.assertAllClose(got, want)

    def test_draws_are_a_function_of_the_key(self):
        """Same key, same augmentation, in any pipeline; another key differs.

        Every draw of the recipe (crop window, flip, RandAugment's ops and
        magnitudes) is stateless: a fresh dataset (a fresh process, a
        resumed run) repeats an element's augmentation from its key alone.
        """
        cfg = config_lib.AugmentConfig()
        data = _jpeg(64, 96, seed=5)

        def run(indices):
            ds = tf.data.Dataset.from_tensor_slices(indices).map(
                lambda i: augment.preprocess_for_train(
                    tf.constant(data), 32, cfg, rng.element_key(3, 0, 0, i)
                )
            )
            return [x.numpy() for x in ds]

        first = run(tf.range(6, dtype=tf.int64))
        again = run(tf.range(6, dtype=tf.int64))
        for a, b in zip(first, again):
            self.assertAllEqual(a, b)
        # Element 4 alone, in a new dataset: its own key, its own draws.
        self.assertAllEqual(run(tf.constant([4], tf.int64))[0], first[4])
        # Different keys draw differently.
        digests = {x.tobytes() for x in first}
        self.assertLen(digests, 6)

    def test_no_stateful_random_op_is_left(self):
        """The traced recipe holds stateless random ops only."""
        cfg = config_lib.AugmentConfig(randaug_magnitude=9.0)
        mix = augment.BatchMixup(4, 0.8, 1.0, 0.1)

        @tf.function
        def fn(b, labels):
            image = augment.preprocess_for_train(b, 32, cfg, KEY)
            return mix(tf.stack([image, image]), labels, KEY)

        graph = fn.get_concrete_function(
            tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)
        ).graph
        types = set()
        graphs = [graph.as_graph_def()]
        for g in graphs:
            types.update(n.op for n in g.node)
            for f in g.library.function:
                types.update(n.op for n in f.node_def)
        stateful = {
            "RandomUniform",
            "RandomUniformInt",
            "RandomStandardNormal",
            "RandomGamma",
            "SampleDistortedBoundingBoxV2",
        }
        self.assertEmpty(types & stateful)
        self.assertIn("StatelessRandomUniformV2", types)
        self.assertIn("StatelessSampleDistortedBoundingBox", types)

    def test_inception_crop_varies_and_stays_inside(self):
        data = _jpeg(80, 120, seed=1)
        shapes = set()
        for _ in range(12):
            crop = augment.decode_and_inception_crop(tf.constant(data))
            self.assertEqual(crop.dtype, tf.uint8)
            h, w, c = crop.shape
            self.assertLessEqual(h, 80)
            self.assertLessEqual(w, 120)
            self.assertEqual(c, 3)
            shapes.add((h, w))
        self.assertGreater(len(shapes), 1)
        crop, spec = _in_dataset(augment.decode_and_inception_crop, data)
        self.assertEqual(spec.shape.as_list(), [None, None, 3])
        self.assertEqual(crop.shape[-1], 3)


class TargetsTest(tf.test.TestCase):
    def test_single_label_smoothing(self):
        for out in (
            augment.single_label_target(tf.constant(2, tf.int64), 4, 0.1),
            _in_dataset(
                lambda x: augment.single_label_target(x, 4, 0.1),
                tf.constant(2, tf.int64),
            )[0],
        ):
            self.assertAllClose(out, [0.025, 0.025, 0.925, 0.025])
            self.assertAllClose(tf.reduce_sum(out), 1.0)

    def test_multi_hot_with_scores_duplicates_and_smoothing(self):
        labels = tf.constant([3, 1, 3], tf.int64)
        scores = tf.constant([0.2, 1.0, 0.7])

        def fn(lab, sc):
            return augment.multi_hot_target(lab, 5, sc)

        for out in (fn(labels, scores), _in_dataset(fn, labels, scores)[0]):
            # Duplicates keep the largest score.
            self.assertAllClose(out, [0, 1.0, 0, 0.7, 0])
        _, spec = _in_dataset(fn, labels, scores)
        self.assertEqual(spec.shape, (5,))
        # No scores given (an empty list): every label counts 1.
        out = augment.multi_hot_target(labels, 5, tf.zeros([0]))
        self.assertAllClose(out, [0, 1, 0, 1, 0])
        out = augment.multi_hot_target(labels, 5, None, label_smoothing=1e-4)
        self.assertAllClose(out, [5e-5, 1 - 5e-5, 5e-5, 1 - 5e-5, 5e-5])

    def test_mixup_batch(self):
        mix = augment.BatchMixup(4, 0.8, 0.0, 0.1)
        images = tf.random.normal([6, 8, 8, 3])
        labels = tf.constant([0, 1, 2, 3, 0, 1])
        ds = tf.data.Dataset.from_tensors((images, labels)).map(
            lambda x, y: mix(x, y, KEY)
        )
        self.assertEqual(ds.element_spec[0].shape, (6, 8, 8, 3))
        self.assertEqual(ds.element_spec[1].shape, (6, 4))
        reverse = images[::-1]
        for mixed, targets in (mix(images, labels, KEY), next(iter(ds))):
            targets = targets.numpy()
            self.assertAllClose(targets.sum(-1), np.ones(6))
            for i in range(6):
                own, other = int(labels[i]), int(labels[::-1][i])
                rest = [c for c in range(4) if c not in (own, other)]
                # Classes in neither image keep the smoothing floor.
                self.assertAllClose(targets[i, rest], [0.025] * len(rest))
                if own == other:
                    continue
                # The image is mixed with the same lambda as the target.
                lam = (targets[i, own] - 0.025) / 0.9
                self.assertAllClose(
                    mixed[i],
                    lam * images[i] + (1 - lam) * reverse[i],
                    atol=1e-4,
                )
        # The batch's key fixes its lambdas: the same key mixes alike,
        # another key differently.
        once, _ = mix(images, labels, KEY)
        self.assertAllEqual(mix(images, labels, KEY)[0], once)
        other, _ = mix(images, labels, KEY + 1)
        self.assertNotAllClose(other, once)


if __name__ == "__main__":
    tf.test.main()
