"""Tests for stateless stochastic depth (coatnet_tf.noise).

Masks must be a function of (seed, step, replica, layer, draw) only: two
models with the same noise state drop the same examples, so a resumed run
reproduces the unbroken one; any of the five changing changes the masks.
"""

import numpy as np
import tensorflow as tf

import coatnet_tf
from tests import devices

devices.split_cpu(2)  # Two replicas for MirroredStrategy.


def masks(layer, batch=64, draw=0):
    """The per-example mask (0 or 1 / keep) a layer applies, [batch]."""
    y = layer(tf.ones([batch, 2, 2, 1]), training=True, draw=draw)
    return y[:, 0, 0, 0].numpy()


def layer_with(seed, step, rate=0.5, index=0):
    state = coatnet_tf.NoiseState()
    state.set(seed, step)
    layer = coatnet_tf.StochasticDepth(rate, index)
    layer.noise_state = state
    return layer


class StochasticDepthTest(tf.test.TestCase):
    def test_drops_whole_examples_at_the_rate(self):
        layer = layer_with(seed=1, step=0, rate=0.25)
        x = tf.ones([4000, 2, 3])
        y = layer(x, training=True).numpy()
        per_example = y.reshape(4000, -1)
        # Each example is all zero or all 1 / (1 - rate).
        self.assertTrue(np.all(per_example == per_example[:, :1]))
        self.assertAllClose(np.unique(per_example), [0.0, 1.0 / 0.75])
        kept = np.mean(per_example[:, 0] > 0)
        self.assertBetween(kept, 0.72, 0.78)
        self.assertAllEqual(layer(x, training=False), x)

    def test_same_state_same_masks(self):
        a, b = layer_with(7, 12), layer_with(7, 12)
        self.assertAllEqual(masks(a), masks(b))
        # And the same on a second call: the layer keeps no state.
        self.assertAllEqual(masks(a), masks(a))

    def test_step_seed_layer_and_draw_change_the_masks(self):
        base = masks(layer_with(7, 12))
        for other in (
            masks(layer_with(7, 13)),
            masks(layer_with(8, 12)),
            masks(layer_with(7, 12, index=1)),
            masks(layer_with(7, 12), draw=1),
        ):
            self.assertNotAllEqual(base, other)

    def test_unset_state_and_no_state_drop_nothing(self):
        x = tf.ones([64, 2, 2, 1])
        layer = coatnet_tf.StochasticDepth(0.5)
        self.assertAllEqual(layer(x, training=True), x)  # No state.
        layer.noise_state = coatnet_tf.NoiseState()  # Unset.
        self.assertAllEqual(layer(x, training=True), x)
        layer.noise_state.set(1, 0)
        self.assertNotAllEqual(layer(x, training=True), x)
        layer.noise_state.clear()
        self.assertAllEqual(layer(x, training=True), x)

    def test_graph_and_xla_draw_the_eager_masks(self):
        layer = layer_with(3, 4)
        eager = masks(layer)
        x = tf.ones([64, 2, 2, 1])
        for jit in (False, True):
            fn = tf.function(
                lambda t: layer(t, training=True),
                jit_compile=jit,
                autograph=False,
            )
            self.assertAllEqual(fn(x)[:, 0, 0, 0], eager)
            # A state set after tracing is read at run time.
            layer.noise_state.set(3, 5)
            self.assertNotAllEqual(fn(x)[:, 0, 0, 0], eager)
            layer.noise_state.set(3, 4)

    def test_rejects_invalid_arguments(self):
        with self.assertRaises(ValueError):
            coatnet_tf.StochasticDepth(1.0)
        with self.assertRaises(ValueError):
            coatnet_tf.StochasticDepth(0.1, index=-1)

    def test_config_keeps_the_index(self):
        layer = coatnet_tf.StochasticDepth(0.2, 7)
        clone = coatnet_tf.StochasticDepth.from_config(layer.get_config())
        self.assertEqual((clone.rate, clone.index), (0.2, 7))


class ReplicaTest(tf.test.TestCase):
    def test_replicas_draw_different_masks_reproducibly(self):
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        with strategy.scope():
            layer = layer_with(5, 9)

        @tf.function
        def step():
            def replica_fn():
                return layer(tf.ones([64, 1, 1, 1]), training=True)

            return strategy.experimental_local_results(strategy.run(replica_fn))

        first = [t.numpy().ravel() for t in step()]
        second = [t.numpy().ravel() for t in step()]
        self.assertNotAllEqual(first[0], first[1])
        for a, b in zip(first, second):
            self.assertAllEqual(a, b)
        # Replica 0 draws what a run without a strategy draws.
        self.assertAllEqual(first[0], masks(layer_with(5, 9)))


class ModelNoiseTest(tf.test.TestCase):
    def model(self):
        model = coatnet_tf.create_model(
            "coatnet-tiny", 5, 32, drop_path_rate=0.5
        )
        model(tf.zeros([1, 32, 32, 3]))
        # A non-zero classifier, so the logits see the features.
        kernel = model.classifier.kernel
        kernel.assign(tf.random.stateless_normal(kernel.shape, [4, 4]))
        return model

    def test_resumed_model_reproduces_the_masks(self):
        x = tf.random.stateless_normal([8, 32, 32, 3], seed=[2, 2])
        unbroken, resumed = self.model(), self.model()
        resumed.set_weights(unbroken.get_weights())
        outputs = []
        for step in range(3):
            unbroken.set_noise_state(11, step)
            outputs.append(unbroken(x, training=True))
        # A fresh model set to step 2 (a resume) draws step 2's masks.
        resumed.set_noise_state(11, 2)
        self.assertAllEqual(resumed(x, training=True), outputs[2])
        self.assertNotAllClose(outputs[1], outputs[2])
        # Each block has its own index.
        indices = [layer.index for layer in unbroken.drop_path_layers()]
        self.assertEqual(indices, list(range(len(unbroken.blocks))))

    def test_noise_state_is_no_weight_and_not_checkpointed(self):
        model = self.model()
        model.set_noise_state(1, 1)
        self.assertNotIn(
            model.noise_state.variable.name,
            [v.name for v in model.variables],
        )
        path = tf.train.Checkpoint(model=model).write(
            self.get_temp_dir() + "/ckpt"
        )
        names = [name for name, _ in tf.train.list_variables(path)]
        self.assertFalse([n for n in names if "noise" in n], names)

    def test_unset_model_is_deterministic_in_training(self):
        model = self.model()
        x = tf.random.stateless_normal([4, 32, 32, 3], seed=[2, 3])
        model.clear_noise_state()
        self.assertAllEqual(model(x, training=True), model(x, training=True))


if __name__ == "__main__":
    tf.test.main()
