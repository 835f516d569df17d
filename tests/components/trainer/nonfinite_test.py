"""A step with a non-finite loss or gradient is skipped, counted, and too
many in a row stop the run; on one device and under MirroredStrategy."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

from components.trainer import nonfinite
from tests import devices

devices.split_cpu(2)


def _setup(strategy, max_in_a_row=3):
    with strategy.scope():
        model = tf_keras.Sequential([tf_keras.layers.Dense(2)])
        model.build([None, 3])
        optimizer = tf_keras.optimizers.AdamW(0.1, weight_decay=0.01)
        optimizer.build(model.trainable_variables)
        guard = nonfinite.StepGuard(max_in_a_row)

    def replica_step(x):
        with tf.GradientTape() as tape:
            per_example = tf.reduce_sum(tf.square(model(x)), axis=1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=4)
        grads = tape.gradient(loss, model.trainable_variables)
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(grads)
        finite = guard.is_finite(per_example, norm)
        guard.apply(optimizer, grads, model.trainable_variables, finite)

    @tf.function
    def step(x):
        dataset = tf.data.Dataset.from_tensors(x)
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
        strategy.run(replica_step, args=(batch,))

    return model, optimizer, guard, step


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


class StepGuardTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("default", "mirrored")
    def test_bad_steps_are_skipped_counted_and_stop_the_run(self, name):
        strategy = (
            tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            if name == "mirrored"
            else tf.distribute.get_strategy()
        )
        model, optimizer, guard, step = _setup(strategy)
        good = np.ones([4, 3], np.float32)
        bad = good.copy()
        bad[3, 0] = np.nan  # One example (on the last replica) is broken.
        step(good)
        self.assertEqual(int(optimizer.iterations.numpy()), 1)
        before = _weights(model)
        moments = [v.numpy().copy() for v in optimizer.variables()[1:]]
        step(bad)
        # Nothing moved; the step still counts; the skip is counted.
        for a, b in zip(before, _weights(model)):
            np.testing.assert_array_equal(a, b)
        for a, v in zip(moments, optimizer.variables()[1:]):
            np.testing.assert_array_equal(a, v.numpy())
        self.assertEqual(int(optimizer.iterations.numpy()), 2)
        self.assertEqual(guard.check(2), 1)
        # A good step resets the run of bad ones.
        step(good)
        self.assertEqual(int(guard.in_a_row.numpy()), 0)
        self.assertNotAllClose(before[0], _weights(model)[0])
        step(bad * np.inf)
        step(bad)
        self.assertEqual(guard.check(5), 3)
        step(bad)
        with self.assertRaisesRegex(
            nonfinite.NonFiniteError, r"Stopped at step 6: the last 3"
        ):
            guard.check(6)
        self.assertTrue(
            np.isfinite(
                np.concatenate([w.ravel() for w in _weights(model)])
            ).all()
        )

    def test_zero_never_stops_and_negative_is_refused(self):
        _, _, guard, step = _setup(tf.distribute.get_strategy(), 0)
        bad = np.full([4, 3], np.nan, np.float32)
        for _ in range(4):
            step(bad)
        self.assertEqual(guard.check(4), 4)
        with self.assertRaisesRegex(ValueError, "max_nonfinite_steps=-1"):
            nonfinite.StepGuard(-1)


if __name__ == "__main__":
    tf.test.main()
