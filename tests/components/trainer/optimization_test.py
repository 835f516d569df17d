"""Tests for the learning-rate schedule, AdamW and the losses."""

import numpy as np
import tensorflow as tf
import tf_keras

import coatnet_tf
from components.trainer import config as config_lib
from components.trainer import losses, optimization
from tests import devices

devices.split_cpu(2)  # For MirroredStrategy; before any op runs.


def _lr(decay, total=100, warmup=10, peak=1e-3, end=1e-5):
    schedule = optimization.build_schedule(
        config_lib.OptimizerConfig(learning_rate=peak),
        config_lib.ScheduleConfig(decay=decay, end_learning_rate=end),
        config_lib.Steps(total=total, warmup=warmup, steps_per_epoch=10.0),
    )
    return lambda step: float(schedule(step))


class ScheduleTest(tf.test.TestCase):
    def test_warmup_then_cosine(self):
        lr = _lr("cosine")
        self.assertAllClose([lr(0), lr(5), lr(10)], [0.0, 5e-4, 1e-3])
        # Halfway through the decay the cosine is at the mean of its ends.
        self.assertAllClose(lr(55), (1e-3 + 1e-5) / 2, rtol=1e-5)
        self.assertAllClose(lr(100), 1e-5, rtol=1e-5)

    def test_warmup_then_linear(self):
        lr = _lr("linear")
        self.assertAllClose(lr(10), 1e-3)
        self.assertAllClose(lr(55), (1e-3 + 1e-5) / 2, rtol=1e-5)
        self.assertAllClose(lr(100), 1e-5, rtol=1e-5)

    def test_constant_without_warmup(self):
        lr = _lr("constant", warmup=0, peak=5e-5, end=5e-5)
        self.assertAllClose([lr(0), lr(50), lr(100)], [5e-5] * 3)


class WeightDecayTest(tf.test.TestCase):
    def test_exclusions_on_coatnet(self):
        model = coatnet_tf.create_model("coatnet-tiny", 4, 32)
        model(tf.zeros([1, 32, 32, 3]))
        excluded = optimization.no_decay_variables(
            model.trainable_variables, ("relative_position_bias",)
        )
        names = {v.name for v in excluded}
        tables = [v for v in model.trainable_variables if v.shape.rank == 3]
        self.assertNotEmpty(tables)
        for v in model.trainable_variables:
            norm_or_bias = v.name.split("/")[-1].split(":")[0] in (
                "gamma",
                "beta",
                "bias",
            )
            is_table = "relative_position_bias" in v.name
            self.assertEqual(v.name in names, norm_or_bias or is_table, v.name)

    def test_decay_is_decoupled_and_skips_excluded(self):
        kernel = tf.Variable(tf.ones([2, 2]))
        bias = tf.Variable(tf.ones([2]))
        optimizer = optimization.build_optimizer(
            config_lib.OptimizerConfig(weight_decay=0.5, ema_decay=0.0),
            optimization._Constant(0.1),
            [kernel, bias],
        )
        optimizer.build([kernel, bias])
        # Zero gradients: Adam moves nothing; only the decay acts.
        optimizer.apply_gradients(
            [(tf.zeros([2, 2]), kernel), (tf.zeros([2]), bias)]
        )
        self.assertAllClose(kernel, np.full([2, 2], 1 - 0.1 * 0.5))
        self.assertAllClose(bias, np.ones([2]))


class FusedAdamWTest(tf.test.TestCase):
    """FusedAdamW's fused update equals tf_keras' AdamW."""

    def run_steps(self, cls, policy="float32", strategy=None, steps=4):
        strategy = strategy or tf.distribute.get_strategy()
        tf_keras.mixed_precision.set_global_policy(policy)
        self.addCleanup(tf_keras.mixed_precision.set_global_policy, "float32")
        with strategy.scope():
            layer = tf_keras.layers.Dense(3, bias_initializer="ones")
            layer.build([None, 4])
            layer.kernel.assign(tf.reshape(tf.range(12.0) / 12.0, [4, 3]))
            optimizer = cls(
                learning_rate=0.05,
                weight_decay=0.1,
                beta_1=0.8,
                beta_2=0.95,
                epsilon=1e-6,
                use_ema=True,
                ema_momentum=0.5,
            )
            optimizer.exclude_from_weight_decay(var_list=[layer.bias])
            optimizer.build(layer.trainable_variables)

        @tf.function
        def step(i):
            def replica_step():
                x = tf.random.stateless_normal([5, 4], seed=[i, 1])
                with tf.GradientTape() as tape:
                    y = tf.cast(layer(x), tf.float32)
                    loss = tf.reduce_sum(tf.sin(y))
                variables = layer.trainable_variables
                grads = tape.gradient(loss, variables)
                optimizer.apply_gradients(zip(grads, variables))

            strategy.run(replica_step)

        for i in range(steps):
            step(tf.constant(i))
        optimizer.finalize_variable_values(layer.trainable_variables)
        slots = [v.numpy() for v in optimizer.variables]
        return [v.numpy() for v in layer.trainable_variables], slots

    def assert_same_updates(self, **kwargs):
        ours = self.run_steps(optimization.FusedAdamW, **kwargs)
        keras = self.run_steps(tf_keras.optimizers.AdamW, **kwargs)
        self.assertNotAllClose(ours[0][0], np.arange(12.0).reshape(4, 3) / 12)
        for a, b in zip(ours[0] + ours[1], keras[0] + keras[1]):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-7)

    def test_float32(self):
        self.assert_same_updates()

    def test_mixed_bfloat16(self):
        self.assert_same_updates(policy="mixed_bfloat16")

    def test_mirrored_strategy(self):
        self.assertGreaterEqual(len(tf.config.list_logical_devices("CPU")), 2)
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        self.assert_same_updates(strategy=strategy)

    def test_build_optimizer_makes_it(self):
        optimizer = optimization.build_optimizer(
            config_lib.OptimizerConfig(), optimization._Constant(0.1), []
        )
        self.assertIsInstance(optimizer, optimization.FusedAdamW)


class LossTest(tf.test.TestCase):
    def test_softmax_and_sigmoid(self):
        logits = tf.constant([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
        targets = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
        log_softmax = tf.nn.log_softmax(logits).numpy()
        want = [
            -log_softmax[0, 0],
            -(log_softmax[1, 1] + log_softmax[1, 2]) / 2,
        ]
        self.assertAllClose(
            losses.per_example_loss(targets, logits, sigmoid=False), want
        )
        sig = tf.math.sigmoid(logits).numpy()
        t = targets.numpy()
        want = -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).sum(-1)
        self.assertAllClose(
            losses.per_example_loss(targets, logits, sigmoid=True),
            want,
            rtol=1e-5,
        )

    def test_bfloat16_logits_reduce_in_float32(self):
        logits = tf.constant([[2.0, 0.0]], tf.bfloat16)
        out = losses.per_example_loss(tf.constant([[1.0, 0.0]]), logits, False)
        self.assertEqual(out.dtype, tf.float32)

    def test_top1(self):
        logits = tf.constant([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
        soft = tf.constant([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
        self.assertAllEqual(losses.top1_correct(logits, soft, False), [1, 0])
        multi = tf.constant([[0.0, 1.0, 1.0], [0.0, 0.6, 0.0]])
        self.assertAllEqual(losses.top1_correct(logits, multi, True), [0, 1])

    def test_auto_kind(self):
        self.assertTrue(losses.uses_sigmoid("auto", True))
        self.assertFalse(losses.uses_sigmoid("auto", False))
        self.assertTrue(losses.uses_sigmoid("sigmoid", False))


if __name__ == "__main__":
    tf.test.main()
