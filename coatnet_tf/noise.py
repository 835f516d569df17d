"""Stochastic depth with masks that are a function of the training step.

A resumed run must draw the same drop-path masks as the run it continues,
so no mask comes from a stateful generator (whose state a checkpoint does
not hold). Every mask is `tf.random.stateless_uniform` with a seed folded
from

    (seed, step)  ->  replica id  ->  layer index  ->  draw

where (seed, step) is the model's `NoiseState`, set by the training loop
before each step; the replica id is the replica context's
`replica_id_in_sync_group` (0 without a distribution strategy); the layer
index is the fixed block index given to each `StochasticDepth`; the draw
tells apart the two residual branches of a Transformer block.

While the state is unset (its step is negative) and in inference, the
layer is the identity: nothing random happens. Training with a non-zero
drop-path rate therefore needs `CoAtNet.set_noise_state(seed, step)`
before each step.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

_register = tf_keras.saving.register_keras_serializable(package="coatnet")

_UNSET = -1  # The step of an unset state.
# Named, not "auto_select", which may select different generators on
# different devices.
_ALG = "philox"


class NoiseState(tf.__internal__.tracking.AutoTrackable):
    """The (seed, step) that keys every stochastic-depth mask of a model.

    One int64 variable [seed, step], non-trainable and no Keras weight: it
    is not in `model.variables` and not in checkpoints (the training loop
    owns the step and sets it again on resume), so checkpoints keep their
    variable layout. SavedModels do hold it, because the traced training
    call reads it. Created under a distribution strategy's scope it is
    mirrored; its aggregation lets either the cross-replica or a replica
    context assign it.
    """

    def __init__(self):
        super().__init__()
        self.variable = tf.Variable(
            [0, _UNSET],
            dtype=tf.int64,
            trainable=False,
            name="noise_state",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def set(self, seed, step) -> None:
        """Keys the masks of the next training step.

        Args:
          seed: the run's seed (int or int scalar tensor).
          step: the training step about to run, >= 0 (int or tensor).
        """
        value = tf.stack(
            [tf.cast(seed, tf.int64), tf.cast(step, tf.int64)], axis=0
        )
        self.variable.assign(value)

    def clear(self) -> None:
        """Unsets the state: stochastic depth keeps every branch."""
        self.variable.assign([0, _UNSET])

    def is_set(self) -> tf.Tensor:
        """A bool scalar tensor: whether masks are drawn."""
        return self.variable[1] >= 0

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # The Trackable protocol: the variable is a child in SavedModels
        # (functions capture it) but not in checkpoints.
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":
            children.pop("variable", None)
        return children


def _replica_id() -> tf.Tensor:
    context = tf.distribute.get_replica_context()
    if context is None:  # Cross-replica context: one logical replica.
        return tf.constant(0, tf.int64)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)


def mask_seed(state: tf.Tensor, index: int, draw: int = 0) -> tf.Tensor:
    """The stateless seed of one layer's mask: (seed, step) folded with the
    replica id, the layer index and the draw.

    Args:
      state: [seed, step], int64.
      index: the layer's fixed index in the model.
      draw: which of the layer's draws within one step (0 or 1).

    Returns:
      An int64 [2] seed for `tf.random.stateless_uniform`.
    """

    def fold(key, data):
        return tf.random.experimental.stateless_fold_in(key, data, alg=_ALG)

    key = fold(tf.cast(state, tf.int64), _replica_id())
    key = fold(key, tf.constant(index, tf.int64))
    return fold(key, tf.constant(draw, tf.int64))


@_register
class StochasticDepth(tf_keras.layers.Layer):
    """Drops a residual branch per example (Huang et al., 2016).

    In training, with its `NoiseState` set, each example's branch is zeroed
    with probability `rate` and otherwise scaled by 1 / (1 - rate), so
    inference needs no rescaling. The mask is a stateless draw keyed on
    (seed, step, replica, index, draw); see the module docstring.

    Args:
      rate: drop probability in [0, 1).
      index: the layer's fixed index in the model (the block index); two
        layers of one model need distinct indices.
      **kwargs: base `Layer` arguments.
    """

    def __init__(self, rate: float = 0.0, index: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Stochastic depth rate {rate} not in [0, 1).")
        if index < 0:
            raise ValueError(f"Stochastic depth index {index} is negative.")
        self.rate = float(rate)
        self.index = int(index)
        # Set by the owning model (`CoAtNet`); None leaves the layer the
        # identity, as does an unset state.
        self.noise_state: NoiseState | None = None

    def call(self, inputs, training=None, draw: int = 0):
        if not training or self.rate == 0.0 or self.noise_state is None:
            return inputs
        state = self.noise_state.variable.read_value()
        keep = 1.0 - self.rate
        # One draw per example: [B, 1, ..., 1] broadcasts over the rest.
        shape = [tf.shape(inputs)[0]] + [1] * (inputs.shape.rank - 1)
        # Uniform [0, 1) from the top 24 of 32 random bits, exact in
        # float32. Not a float draw: XLA converts bits to floats unlike
        # TensorFlow's kernel, and a mask must not depend on the compiler.
        bits = tf.random.stateless_uniform(
            shape,
            mask_seed(state, self.index, draw),
            minval=None,
            maxval=None,
            dtype=tf.uint32,
            alg=_ALG,
        )
        uniform = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32)
        uniform = uniform * (2.0**-24)
        mask = tf.floor(keep + uniform) / keep
        mask = tf.where(state[1] >= 0, mask, tf.ones_like(mask))
        return inputs * tf.cast(mask, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "index": self.index}
