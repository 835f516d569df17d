"""What a run saves and sets so that resuming it changes nothing.

A run killed after a checkpoint and started again ends with the weights an
unbroken run ends with (bit-equal in deterministic mode, on one device and
under MirroredStrategy), because:

- the input position is checkpointed with the model (`InputState`): each
  worker saves its host-side tf.data iterator (file order, shuffle buffer,
  read offsets, stream counters) to `<model>/checkpoints/input-<worker>/
  ckpt-<step>`, before the model's `ckpt-<step>`, so resuming reads on from
  there instead of replaying the stream;
- augmentation and Mixup/CutMix draw from stateless keys of the example's
  (batch's) position in that stream (`rng`, `input_pipeline`);
- the model's own noise (stochastic depth) is keyed on (seed, step) through
  `set_model_noise` (the model's `set_noise_state`);
- with several replicas, every save first gives each replica the averaged
  BatchNorm statistics, the value the checkpoint holds
  (`sync_replica_statistics`).

Batches leave the host iterator in the training loop and reach the replicas
by `experimental_distribute_values_from_function`, the k-th batch of a step
going to the k-th local replica, as `distribute_datasets_from_function`
would send them. A distributed dataset's iterator cannot be checkpointed
under MirroredStrategy (it is not trackable), which is why the host
iterator is kept. TPUs need the distributed dataset: there the input is
not checkpointed (`train_lib` reseeds the stream from the step instead).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import tensorflow as tf

from components import base

# Below the checkpoint directory: one input-state directory per worker.
INPUT_DIR = "input-{worker}"


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas on this worker (the default strategy has one)."""
    if strategy.num_replicas_in_sync == 1:
        return 1
    return len(strategy.extended.worker_devices)


class InputState:
    """One worker's training input: a host iterator saved with the model."""

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        worker: int,
        checkpoint_dir: str,
        keep: int,
        dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    ):
        """Builds the worker's pipeline and its checkpoint manager.

        Args:
          strategy: the strategy trained under.
          worker: this worker's index (its input pipeline's id).
          checkpoint_dir: the model's checkpoint directory.
          keep: input checkpoints kept (as many as model checkpoints).
          dataset_fn: builds the training stream of an input pipeline.
        """
        self.strategy = strategy
        self.local = local_replicas(strategy)
        replicas = strategy.num_replicas_in_sync
        ctx = tf.distribute.InputContext(
            num_input_pipelines=replicas // self.local,
            input_pipeline_id=worker,
            num_replicas_in_sync=replicas,
        )
        self.checkpoint_dir = checkpoint_dir
        self.directory = os.path.join(
            checkpoint_dir, INPUT_DIR.format(worker=worker)
        )
        with tf.device("/cpu:0"):
            self.iterator = iter(dataset_fn(ctx))
        self.manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(iterator=self.iterator),
            self.directory,
            max_to_keep=keep,
        )

    def save(self, step: int) -> None:
        """Saves the position; call before the model's checkpoint `step`."""
        self.manager.save(checkpoint_number=step)

    def restore(self, step: int) -> None:
        """Puts the stream back where checkpoint `step` left it.

        Raises:
          base.ArtifactError: there is no input position for that step.
        """
        path = os.path.join(self.directory, f"ckpt-{step}")
        if not tf.io.gfile.exists(path + ".index"):
            raise base.ArtifactError(
                f"{self.checkpoint_dir} holds the model at step {step} but "
                f"not this worker's input position ({path}): the run cannot "
                "continue its input stream exactly. Start it in a new "
                "--output."
            )
        self.manager.checkpoint.restore(path).assert_consumed()

    def next_step(self, iterator):
        """The next step's per-replica (images, targets); in `tf.function`.

        Args:
          iterator: `self.iterator`, passed into the compiled loop.

        Returns:
          Per-replica values: the k-th host batch to the k-th local replica.
        """
        batches = [next(iterator) for _ in range(self.local)]
        local = self.local
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: batches[ctx.replica_id_in_sync_group % local]
        )


def set_model_noise(model, seed: int, step: tf.Variable) -> None:
    """Keys the model's train-time noise (stochastic depth) on the step.

    The one place the Trainer tells the model which step it is at, called
    in the replica context of every step, inside the compiled step. The
    model draws its stochastic-depth masks from stateless RNG keyed on
    (seed, step, replica, block), so a resumed run draws the masks an
    unbroken run draws. A CoAtNet whose noise state was never set drops
    no branch at all, so this call is what turns stochastic depth on.

    Args:
      model: the model being trained (a `coatnet_tf.CoAtNet`).
      seed: the run's seed.
      step: the optimizer's step counter (the step being taken).
    """
    model.set_noise_state(seed, step)


def sync_replica_statistics(
    strategy: tf.distribute.Strategy, model: tf.Module
) -> None:
    """Gives every replica the averaged BatchNorm statistics.

    Moving means and variances are sync-on-read variables: each replica
    updates its own copy from its own batches, and a checkpoint saves their
    mean. A resumed run restores that mean into every replica, so the
    unbroken run must continue from it too, or the two differ in the last
    bits. Averaging them at every save makes what was saved the state both
    runs continue from (and it is the value evaluation and export read).

    Args:
      strategy: the strategy trained under.
      model: the model (its sync-on-read variables are averaged).
    """
    if strategy.num_replicas_in_sync == 1:
        return
    with strategy.scope():
        for var in model.variables:
            if var.synchronization == tf.VariableSynchronization.ON_READ:
                var.assign(var.read_value())
