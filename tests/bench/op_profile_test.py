"""`bench/op_profile.py` and `model_bench.goals` on real traces."""

import tempfile

import tensorflow as tf

from bench import op_profile


class OpTypeTest(tf.test.TestCase):
    def test_event_names(self):
        self.assertEqual(op_profile._op_type("dense/MatMul:MatMul"), "MatMul")
        self.assertEqual(
            op_profile._op_type("a/b:_MklNativeFusedMatMul#id=3,x=1#"),
            "_MklNativeFusedMatMul",
        )
        # Runtime wrappers and function calls would count time twice.
        self.assertIsNone(op_profile._op_type("ExecutorState::Process"))
        self.assertIsNone(op_profile._op_type("f:StatefulPartitionedCall"))
        self.assertIsNone(op_profile._op_type("no op here"))


class OpTimeTableTest(tf.test.TestCase):
    def test_matmul_dominates_a_matmul_loop(self):
        a = tf.random.normal([384, 384])

        @tf.function
        def step():
            x = a
            for _ in range(8):
                x = tf.matmul(x, a)
            return tf.reduce_sum(x)

        step()
        with tempfile.TemporaryDirectory() as logdir:
            table = op_profile.op_time_table(step, 3, logdir, top=3)
        fractions = table["fraction"]
        self.assertAlmostEqual(sum(fractions.values()), 1.0, places=6)
        top = max(fractions, key=fractions.get)
        self.assertTrue(top.endswith("MatMul"), table)
        self.assertGreater(table["ms_per_step"][top], 0.0)

    def test_missing_trace(self):
        with tempfile.TemporaryDirectory() as logdir:
            with self.assertRaisesRegex(FileNotFoundError, "xplane"):
                op_profile.read_host_op_times(logdir)


if __name__ == "__main__":
    tf.test.main()
