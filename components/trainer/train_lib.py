"""The training loop: a custom loop over `strategy.run`, resumable.

One `Trainer` owns the model, the optimizer (AdamW with an optional EMA),
the metrics and the checkpoint, all created inside the strategy's scope.
A training call runs `steps_per_execution` steps inside one `tf.function`
(Orbit's steps_per_loop), each step being:

  forward and backward per replica; loss summed per example and divided by
  the GLOBAL batch (`tf.nn.compute_average_loss`), so that the all-reduced
  SUM of the replica gradients is the gradient of the global-batch mean;
  all-reduce; clip to a global norm; AdamW update with decoupled weight
  decay; EMA update.

Checkpoints (`model`, `optimizer` with its step counter and EMA) are written
to `<model>/checkpoints` every N steps and at the end, keeping K, and a run
resumes from the latest one on start. The Model artifact's serving weights
(`model_io.write_model`) are the EMA weights when an EMA is kept.

A run resumes exactly (`resume`): the input position is saved with every
checkpoint, every augmentation draw is keyed on the example's position in
the stream, and the model's noise on the step.

A fingerprint of the run (`fingerprint`) is recorded beside the
checkpoints; a run with other settings refuses to resume them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import tensorflow as tf
import tf_keras
from absl import logging

from artifacts import model as model_io
from components import base
from components.trainer import config as config_lib
from components.trainer import (
    finetune,
    input_pipeline,
    losses,
    nonfinite,
    optimization,
    reporting,
    resume,
)
from components.trainer import fingerprint as fingerprint_lib
from components.trainer import strategy as strategy_lib


class Trainer:
    """Trains one CoAtNet on one Examples artifact under one strategy."""

    def __init__(
        self,
        config: config_lib.TrainerConfig,
        info: input_pipeline.ExamplesInfo,
        model_dir: str,
        strategy: tf.distribute.Strategy,
        base_model: base.Artifact | None = None,
    ):
        """Creates the model, optimizer, metrics and checkpoint.

        Args:
          config: the trainer config.
          info: the Examples artifact to train on.
          model_dir: the Model artifact's root; checkpoints and TensorBoard
            logs go below it.
          strategy: the distribution strategy (see `strategy.py`).
          base_model: a Model artifact to finetune or warm-start from.
        """
        self.config = config
        self.info = info
        self.model_dir = model_dir
        self.strategy = strategy
        self.base_model = base_model
        self.sigmoid = losses.uses_sigmoid(config.loss.kind, info.multi_label)
        self.steps = config_lib.resolve_steps(
            config, info.num_examples.get(config.data.train_split, 0)
        )
        self.spec = model_io.ModelSpec(
            variant=config.model.variant,
            num_classes=info.num_classes,
            image_size=config.model.image_size,
            multi_label=self.sigmoid,
            overrides=config_lib.model_overrides(config, self.sigmoid),
        )
        self.is_chief = strategy_lib.is_chief(strategy)
        self.precision = strategy_lib.resolve_precision(
            config.runtime.precision, strategy
        )
        # bfloat16 images halve the host-to-device transfer; the model casts
        # its input to the compute dtype anyway.
        self.input_dtype = (
            tf.bfloat16 if self.precision == "mixed_bfloat16" else tf.float32
        )
        self.eval_batch = config.eval_batch_size or config.batch_size
        for batch, name in (
            (config.batch_size, "batch_size"),
            (self.eval_batch, "eval_batch_size"),
        ):
            if batch % strategy.num_replicas_in_sync:
                raise ValueError(
                    f"{name}={batch} does not split evenly over "
                    f"{strategy.num_replicas_in_sync} replicas."
                )
        self.eval_batches = self._eval_batches()
        self._build()
        # The built model's kernels: the variant's default unless overridden.
        caveat = strategy_lib.bias_gradient_caveat(
            self.precision,
            self.model.config.kernels,
            strategy_lib.is_tpu(strategy),
            config.runtime.jit_compile,
        )
        if caveat:
            logging.warning(caveat)
        self._train_fn = None
        self._skipped_logged = 0
        self._eval_fn = None
        self.reporter = reporting.Reporter(model_dir, self.is_chief)
        self._saved_step = None
        self._init = None
        self._train_input = None
        # coatnet_tf's RestoreReport when the weights came from a finetune
        # source.
        self.restore_report = None

    # Construction.

    def _eval_batches(self) -> int:
        """Global batches per evaluation; 0 when there is nothing to eval.

        Checked before training starts, so that a run does not fail at its
        end for want of an eval split or of its size.
        """
        split = self.config.data.eval_split
        if not split:
            return 0
        try:
            self.info.split_files(split)
        except base.ArtifactError:
            logging.warning(
                "No %r split in %s: training without evaluation.",
                split,
                self.info.uri,
            )
            return 0
        return input_pipeline.eval_steps(
            self.info, self.config, self.eval_batch
        )

    def _build(self) -> None:
        previous = tf_keras.mixed_precision.global_policy()
        tf_keras.mixed_precision.set_global_policy(self.precision)
        try:
            with self.strategy.scope():
                self.model = model_io.build_model(self.spec)
        finally:
            # Layers keep the policy they were built with; later models in
            # this process get the caller's policy back.
            tf_keras.mixed_precision.set_global_policy(previous)
        with self.strategy.scope():
            self.learning_rate = optimization.build_schedule(
                self.config.optimizer, self.config.schedule, self.steps
            )
            self.optimizer = optimization.build_optimizer(
                self.config.optimizer,
                self.learning_rate,
                self.model.trainable_variables,
            )
            self.guard = nonfinite.StepGuard(
                self.config.runtime.max_nonfinite_steps
            )
            self.metrics = {
                name: tf_keras.metrics.Mean(name)
                for name in (
                    "loss",
                    "accuracy",
                    "grad_norm",
                    "eval_loss",
                    "eval_accuracy",
                )
            }
            self.checkpoint = tf.train.Checkpoint(
                model=self.model, optimizer=self.optimizer
            )
        self.checkpoint_dir = os.path.join(
            self.model_dir, model_io.CHECKPOINT_DIR
        )
        save_dir = self.checkpoint_dir
        if not self.is_chief:
            # Every worker takes part in a save; only the chief's is kept.
            save_dir = os.path.join(
                self.model_dir,
                f".worker_{strategy_lib.worker_id(self.strategy)}_tmp",
            )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            save_dir,
            max_to_keep=self.config.runtime.keep_checkpoints,
        )
        self.worker = strategy_lib.worker_id(self.strategy)

    def fingerprint(self) -> dict[str, Any]:
        """This run's fingerprint (see `fingerprint.py`)."""
        examples = base.Artifact(base.EXAMPLES, self.info.uri)
        try:
            examples = base.Artifact.read(self.info.uri, base.EXAMPLES)
        except base.ArtifactError:
            pass  # Built in memory: its URI alone identifies it.
        return fingerprint_lib.compute(
            self.config, examples, self.base_model, self.spec
        )

    def initialize(self) -> str:
        """Resumes from the latest checkpoint, else sets initial weights.

        `CheckpointManager.restore_or_initialize`, spelled out: with a
        checkpoint of this run, everything is restored from it (and checked);
        without one, the finetune weights are restored (`init_fn`). The
        optimizer is built in between, so that its EMA starts from the
        finetune weights and its slots exist when a checkpoint restores
        them.

        Returns:
          How the weights were initialized, for logs and the artifact.
        """
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        fingerprint_lib.check_or_record(
            self.checkpoint_dir,
            self.fingerprint(),
            has_checkpoints=latest is not None,
            write=self.is_chief,
        )
        if not strategy_lib.is_tpu(self.strategy):
            self._train_input = resume.InputState(
                self.strategy,
                self.worker,
                self.checkpoint_dir,
                self.config.runtime.keep_checkpoints,
                self._train_dataset_fn(self.config),
            )
        how = "random"
        if latest is None:
            src = finetune.source(self.base_model, self.config.finetune)
            if src is not None:
                self.restore_report = finetune.restore(
                    self.model,
                    src[0],
                    self.info.labels,
                    src[1],
                    self.config.finetune.head_rows,
                )
                how = f"finetune from {self.restore_report.summary()}"
        with self.strategy.scope():
            self.optimizer.build(self.model.trainable_variables)
        if latest is not None:
            # Every worker restores the chief's latest checkpoint, and all of
            # the live model and optimizer must be found in it.
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            how = f"resumed from {latest}"
            self._saved_step = self.step
            if self._train_input is not None:
                self._train_input.restore(self.step)
        logging.info("Initialized: %s (step %d)", how, self.step)
        self._init = how
        return how

    @property
    def step(self) -> int:
        """The number of training steps taken."""
        return int(self.optimizer.iterations.numpy())

    # Steps.

    def _replica_step(self, images, targets):
        """Forward, backward, all-reduce, clip, update, on one replica."""
        grads, per_example, logits = self._grads(images, targets)
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        clip = self.config.optimizer.clip_norm
        if clip > 0:
            grads, norm = tf.clip_by_global_norm(grads, clip)
        else:
            norm = tf.linalg.global_norm(grads)
        finite = self.guard.is_finite(per_example, norm)
        self.guard.apply(
            self.optimizer, grads, self.model.trainable_variables, finite
        )
        self.metrics["loss"].update_state(per_example)
        self.metrics["accuracy"].update_state(
            losses.top1_correct(logits, targets, self.sigmoid)
        )
        self.metrics["grad_norm"].update_state(norm)

    def _grads_impl(self, images, targets):
        resume.set_model_noise(
            self.model, self.config.seed, self.optimizer.iterations
        )
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            per_example = losses.per_example_loss(targets, logits, self.sigmoid)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=self.config.batch_size
            )
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(
                    tf.add_n(self.model.losses)
                )
        grads = tape.gradient(loss, self.model.trainable_variables)
        return grads, per_example, logits

    def _compile(self) -> None:
        jit = self.config.runtime.jit_compile and not strategy_lib.is_tpu(
            self.strategy
        )
        # Only the loops need autograph (`for` over `tf.range`); the steps
        # branch on no tensor, and converting each layer call is slow.
        plain = tf.autograph.experimental.do_not_convert
        xla = functools.partial(tf.function, jit_compile=True, autograph=False)
        self._grads = self._grads_impl
        step = plain(self._replica_step)
        if jit and self.strategy.num_replicas_in_sync == 1:
            # One replica: the whole step, optimizer included, is one XLA
            # program, as it is on TPU.
            step = xla(self._replica_step)
        elif jit:
            # Cross-device all-reduce is not compiled by XLA on CPU/GPU;
            # compile the forward and backward pass only.
            self._grads = xla(self._grads_impl)
        self.replica_step = step
        eval_step = plain(self._eval_step)

        @tf.function
        def train_loop(iterator, num_steps):
            for _ in tf.range(num_steps):
                if self._train_input is None:
                    images, targets = next(iterator)
                else:
                    images, targets = self._train_input.next_step(iterator)
                self.strategy.run(step, args=(images, targets))

        @tf.function
        def eval_loop(iterator, num_steps):
            for _ in tf.range(num_steps):
                self.strategy.run(eval_step, args=next(iterator))

        self._train_fn, self._eval_fn = train_loop, eval_loop

    def _eval_step(self, images, targets, weights):
        logits = self.model(images, training=False)
        per_example = losses.per_example_loss(targets, logits, self.sigmoid)
        self.metrics["eval_loss"].update_state(per_example, weights)
        self.metrics["eval_accuracy"].update_state(
            losses.top1_correct(logits, targets, self.sigmoid), weights
        )

    def run_steps(self, iterator, num_steps: int) -> None:
        """Runs `num_steps` training steps from a distributed iterator."""
        if self._train_fn is None:
            self._compile()
        self._train_fn(iterator, tf.constant(num_steps, tf.int32))

    # Data.

    def _train_dataset_fn(self, config: config_lib.TrainerConfig):
        """The training stream of one input pipeline, given its context."""
        return lambda ctx: input_pipeline.train_dataset(
            self.info,
            config,
            ctx,
            self.spec.image_size,
            self.sigmoid,
            image_dtype=self.input_dtype,
        )

    def train_iterator(self):
        """An iterator over the training stream from `step`.

        Returns:
          This worker's host iterator, restored to `step` by `initialize`;
          on TPU a distributed iterator over a stream reseeded from `step`.
        """
        if self._train_input is not None:
            return self._train_input.iterator
        config = self.config
        if self.step:
            # No input checkpoint on TPU: another seed, so that a resumed
            # run does not repeat the data order it already saw.
            config = dataclasses.replace(
                config, seed=config.seed * 7_919 + self.step
            )
        return iter(
            input_pipeline.distribute(
                self.strategy, self._train_dataset_fn(config)
            )
        )

    def evaluate(self, num_batches: int | None = None) -> dict[str, float]:
        """Evaluates the model's current weights on the eval split.

        Args:
          num_batches: global batches; None uses `eval_steps` or the whole
            split.

        Returns:
          {"loss": ..., "accuracy": ...} (accuracy is top-1, or precision
          at 1 for a sigmoid model).
        """
        if self._eval_fn is None:
            self._compile()
        num_batches = num_batches or self.eval_batches
        if not num_batches:
            raise ValueError("There is no eval split to evaluate on.")
        dataset = input_pipeline.distribute(
            self.strategy,
            lambda ctx: input_pipeline.eval_dataset(
                self.info,
                self.config,
                ctx,
                self.spec.image_size,
                self.eval_batch,
                num_batches,
                image_dtype=self.input_dtype,
            ),
        )
        for name in ("eval_loss", "eval_accuracy"):
            self.metrics[name].reset_state()
        self._eval_fn(iter(dataset), tf.constant(num_batches, tf.int32))
        return {
            "loss": float(self.metrics["eval_loss"].result()),
            "accuracy": float(self.metrics["eval_accuracy"].result()),
        }

    # The loop.

    def train(self) -> reporting.TrainResult:
        """Trains to the configured number of steps, then writes the model.

        Initializes first (`initialize`) unless the caller already did.

        Returns:
          The run's `reporting.TrainResult`.
        """
        init = self._init or self.initialize()
        start = self.step
        total = self.steps.total
        rt = self.config.runtime
        logging.info(
            "Training %s at %d px: steps %d -> %d (%.1f steps/epoch, warmup "
            "%d), global batch %d on %d replicas, %s",
            self.spec.variant,
            self.spec.image_size,
            start,
            total,
            self.steps.steps_per_epoch,
            self.steps.warmup,
            self.config.batch_size,
            self.strategy.num_replicas_in_sync,
            self.precision,
        )
        history = []
        iterator = self.train_iterator() if start < total else None
        progress = reporting.Progress(start, total, self.config.batch_size)
        step = start
        while step < total:
            boundaries = [total, step + rt.steps_per_execution]
            for every in (
                rt.log_every_steps,
                rt.checkpoint_every_steps,
                self.config.eval_every_steps,
            ):
                if every > 0:
                    boundaries.append((step // every + 1) * every)
            n = min(boundaries) - step
            self.run_steps(iterator, n)
            step += n
            skipped = self.guard.check(step)
            if skipped and skipped != self._skipped_logged:
                logging.warning(
                    "%d training steps so far had a non-finite loss or "
                    "gradient and were skipped (latest by step %d).",
                    skipped,
                    step,
                )
                self._skipped_logged = skipped
            if step % max(rt.log_every_steps, 1) == 0 or step == total:
                history.append(self._log(step, progress))
            if step % rt.checkpoint_every_steps == 0:
                self._save(step)
            every = self.config.eval_every_steps
            if (
                self.eval_batches
                and every > 0
                and step % every == 0
                and step < total
            ):
                self.reporter.evaluation(step, self.evaluate())
        self._save(step)
        if self.config.optimizer.ema_decay > 0:
            # Training is over and its state is checkpointed: the model's
            # variables can now hold the EMA weights for eval and export.
            self.optimizer.finalize_variable_values(
                self.model.trainable_variables
            )
        eval_metrics = {}
        if self.eval_batches:
            eval_metrics = self.evaluate()
            self.reporter.evaluation(step, eval_metrics)
        self.reporter.flush()
        return reporting.TrainResult(step, start, history, eval_metrics, init)

    def write_model(self) -> str:
        """Writes the Model artifact's spec, labels and serving weights."""
        uri = self.model_dir
        if not self.is_chief:
            uri = os.path.join(
                self.model_dir,
                f".worker_{strategy_lib.worker_id(self.strategy)}_tmp",
            )
        path = model_io.write_model(
            uri, self.model, self.spec, self.info.labels
        )
        self._cleanup_worker_dir()
        return path

    def _log(self, step: int, progress: reporting.Progress) -> dict:
        # Reading a metric all-reduces it: every worker does it.
        record = {
            "step": step,
            "loss": float(self.metrics["loss"].result()),
            "accuracy": float(self.metrics["accuracy"].result()),
            "grad_norm": float(self.metrics["grad_norm"].result()),
            "learning_rate": float(self.learning_rate(step - 1)),
        }
        for name in ("loss", "accuracy", "grad_norm"):
            self.metrics[name].reset_state()
        return self.reporter.train(record, progress)

    def _save(self, step: int) -> None:
        if step == self._saved_step:
            return  # E.g. resumed at the end: that checkpoint is this one.
        self._saved_step = step
        resume.sync_replica_statistics(self.strategy, self.model)
        if self._train_input is not None:
            # The input position first: a model checkpoint on disk implies
            # the input position of its step is there too.
            self._train_input.save(step)
        self.manager.save(checkpoint_number=step, check_interval=False)
        self._cleanup_worker_dir()

    def _cleanup_worker_dir(self) -> None:
        if not self.is_chief and tf.io.gfile.exists(self.manager.directory):
            tf.io.gfile.rmtree(self.manager.directory)


def run(
    config: config_lib.TrainerConfig,
    examples: base.Artifact,
    model_uri: str,
    base_model: base.Artifact | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[reporting.TrainResult, Trainer]:
    """Trains on an Examples artifact and writes a Model artifact.

    Args:
      config: the trainer config.
      examples: the Examples artifact.
      model_uri: the Model artifact's root (checkpoints, logs, weights).
      base_model: optional Model artifact to finetune from.
      strategy: the strategy; None creates the one the config names (this
        must then be the first TensorFlow work in the process).

    Returns:
      (result, trainer).
    """
    if strategy is None:
        rt = config.runtime
        strategy = strategy_lib.create_strategy(
            rt.strategy, rt.tpu, rt.zone, rt.project
        )
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf_keras.utils.set_random_seed(config.seed)
    info = input_pipeline.read_examples_info(examples)
    trainer = Trainer(config, info, model_uri, strategy, base_model)
    result = trainer.train()
    trainer.write_model()
    return result, trainer
