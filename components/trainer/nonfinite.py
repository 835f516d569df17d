"""Training steps whose loss or gradient is not finite are skipped.

One bad batch (a corrupt image that decoded to extreme values, an
overflow in a low-precision step) must not turn every weight into NaN and
waste the rest of a long run. `StepGuard.apply` applies the gradients
only when the step's loss and its all-reduced gradient are finite on
every replica; otherwise the weights, the optimizer's moments and the
EMA stay as they were, the step counter still advances (as Keras's
LossScaleOptimizer does for a skipped step, so the schedule, checkpoints
and the input position keep their cadence) and the skip is counted. The
Trainer stops with `NonFiniteError` when `max_in_a_row` steps in a row
were skipped: then it is no longer one bad batch but a diverged run.
"""

from __future__ import annotations

import tensorflow as tf


class NonFiniteError(RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


def _counter(name: str) -> tf.Variable:
    # Written from the replica context by one replica's value: every
    # replica holds the same flag, computed from all-reduced values.
    return tf.Variable(
        0,
        dtype=tf.int64,
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class StepGuard:
    """Applies a step's gradients only when they are finite; counts skips.

    Create it under the strategy's scope.

    Args:
      max_in_a_row: stop after this many consecutive skipped steps
        (0: never stop).

    Attributes:
      skipped: steps skipped so far in this process.
      in_a_row: consecutive steps skipped up to the latest one.
    """

    def __init__(self, max_in_a_row: int):
        if max_in_a_row < 0:
            raise ValueError(
                f"max_nonfinite_steps={max_in_a_row}: must be >= 0."
            )
        self.max_in_a_row = max_in_a_row
        self.skipped = _counter("nonfinite_skipped")
        self.in_a_row = _counter("nonfinite_in_a_row")

    @staticmethod
    def is_finite(per_example_loss: tf.Tensor, grad_norm: tf.Tensor):
        """Whether the step may be applied, the same on every replica.

        Call it in the replica context after the gradients' all-reduce.

        Args:
          per_example_loss: this replica's per-example losses.
          grad_norm: the global norm of the all-reduced gradients.

        Returns:
          A scalar bool.
        """
        local_bad = tf.cast(
            tf.logical_not(tf.reduce_all(tf.math.is_finite(per_example_loss))),
            tf.float32,
        )
        ctx = tf.distribute.get_replica_context()
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad)
        return tf.logical_and(
            tf.math.is_finite(tf.cast(grad_norm, tf.float32)), bad == 0.0
        )

    def apply(self, optimizer, grads, variables, finite) -> None:
        """In the replica context: applies `grads` when `finite`, else skips.

        Args:
          optimizer: the Keras optimizer.
          grads: the all-reduced gradients.
          variables: the trainable variables, in `grads`' order.
          finite: `is_finite`'s result.
        """

        def apply_fn(replica_grads):
            optimizer.apply_gradients(
                zip(replica_grads, variables), skip_gradients_aggregation=True
            )
            self.in_a_row.assign(0, read_value=False)

        def skip_fn():
            # apply_gradients advances the step counter; a skip must too.
            optimizer.iterations.assign_add(1, read_value=False)
            self.skipped.assign_add(1, read_value=False)
            self.in_a_row.assign_add(1, read_value=False)

        cond = tf.__internal__.smart_cond.smart_cond
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            cond(finite, lambda: apply_fn(grads), skip_fn)
            return

        # The optimizer's apply calls merge_call, which a cond in the
        # replica context cannot hold: decide in the cross-replica context
        # (as Keras's LossScaleOptimizer does).
        def cross_replica(distribution, grads, finite):
            finite = distribution.experimental_local_results(finite)[0]

            def apply_all():
                distribution.extended.call_for_each_replica(
                    apply_fn, args=(grads,)
                )

            cond(finite, apply_all, skip_fn)

        tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(grads, finite)
        )

    def check(self, step: int) -> int:
        """Raises when too many steps in a row were skipped.

        Args:
          step: the step just reached (for the message).

        Returns:
          The steps skipped so far.

        Raises:
          NonFiniteError: `max_in_a_row` or more consecutive skips.
        """
        in_a_row = int(self.in_a_row.numpy())
        if self.max_in_a_row and in_a_row >= self.max_in_a_row:
            raise NonFiniteError(
                f"Stopped at step {step}: the last {in_a_row} training steps "
                "had a non-finite loss or gradient and were skipped "
                f"(runtime.max_nonfinite_steps={self.max_in_a_row}). The "
                "run has diverged: lower optimizer.learning_rate or raise "
                "the warmup, check the input for broken examples, and "
                "resume from the last checkpoint."
            )
        return int(self.skipped.numpy())
