"""tf.data input pipelines over an Examples artifact, one per input worker.

Each host builds its own pipeline through
`strategy.distribute_datasets_from_function`: files are sharded across input
pipelines (records, when there are fewer files than pipelines), read with a
parallel interleave, shuffled, repeated, decoded and augmented in parallel,
batched to the per-replica batch with `drop_remainder` (static shapes for
TPU) and prefetched. Decoding and augmentation stay on the host; the device
sees float32 images and dense float32 targets only.

The training stream is resumable without replay: every random draw in it
is stateless, keyed on (seed, input pipeline, position in the stream)
(`rng`), and its position (file order, shuffle buffer, read offsets,
counters) is saved by a tf.data iterator checkpoint beside the model's
(`train_lib`). That checkpoint holds the buffers in full (the shuffle
buffer's records, the decoded images in flight): tf.data's symbolic
checkpointing, which would store cursors only, does not restore this
pipeline. Its options make that save fail loudly on any op whose
state the checkpoint could not hold (`ExternalStatePolicy.FAIL`).

Training batches are `(images [b, S, S, 3], targets [b, C])`; evaluation
batches add a weight per example, 0 for the padding that fills the last
batch so that every example is counted exactly once at static shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from artifacts import examples as examples_lib
from components import preprocessing
from components.trainer import augment as augment_lib
from components.trainer import config as config_lib
from components.trainer import rng

AUTOTUNE = tf.data.AUTOTUNE
# tf.data converts map functions with autograph unless told not to. None of
# ours (nor Model Garden's augmentations) branches on a tensor in Python,
# and converting RandAugment alone costs seconds per process.
_plain = tf.autograph.experimental.do_not_convert
# Read-ahead per TFRecord file: large sequential reads suit GCS.
READ_BUFFER_BYTES = 8 << 20

# The Examples artifact's reader-side names, owned by artifacts.examples.
ExamplesInfo = examples_lib.ExamplesInfo
read_examples_info = examples_lib.read_info
parse_example = examples_lib.parse


def _configured_compression(
    info: ExamplesInfo, config: config_lib.TrainerConfig
) -> str | None:
    if config.data.compression is not None:
        return config.data.compression
    return info.compression


def _records(
    files: list[str],
    configured_compression: str | None,
    ctx: tf.distribute.InputContext,
    cycle_length: int,
    block_length: int,
    shuffle_seed: int | None,
    deterministic: bool,
    repeat: bool,
) -> tf.data.Dataset:
    """Serialized records of this input pipeline's share of `files`."""
    compressions = [
        examples_lib.compression_type(f, configured_compression) for f in files
    ]
    ds = tf.data.Dataset.from_tensor_slices((files, compressions))
    shard_files = len(files) >= ctx.num_input_pipelines
    local_files = len(files)
    if shard_files:
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        local_files = len(
            files[ctx.input_pipeline_id :: ctx.num_input_pipelines]
        )
    if shuffle_seed is not None:
        ds = ds.shuffle(local_files, seed=shuffle_seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        lambda path, comp: tf.data.TFRecordDataset(
            path, compression_type=comp, buffer_size=READ_BUFFER_BYTES
        ),
        # More parallel reads than files would read one file twice at once
        # (two epochs of it, interleaved).
        cycle_length=max(1, min(cycle_length, local_files)),
        block_length=block_length,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if not shard_files:
        # Fewer files than pipelines: every pipeline reads everything and
        # keeps its 1/n of the records.
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    return ds


def _options(config: config_lib.TrainerConfig) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = config.deterministic
    # Sharding is done above, per input pipeline; tf.distribute must not
    # shard again.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    if config.data.private_threadpool_size > 0:
        options.threading.private_threadpool_size = (
            config.data.private_threadpool_size
        )
    return options


def batches_per_step(ctx: tf.distribute.InputContext) -> int:
    """Per-replica batches one input pipeline delivers per training step."""
    return ctx.num_replicas_in_sync // ctx.num_input_pipelines


def train_dataset(
    info: ExamplesInfo,
    config: config_lib.TrainerConfig,
    ctx: tf.distribute.InputContext,
    image_size: int,
    sigmoid: bool,
    image_dtype: tf.DType = tf.float32,
) -> tf.data.Dataset:
    """The infinite, augmented training stream of one input pipeline.

    The stream is a function of the config's seed and the pipeline's id:
    its shuffles are seeded, and each example's augmentation (and each
    batch's Mixup/CutMix) draws from a stateless key of its position in
    the stream. A run resumes it by restoring an iterator checkpoint, not
    by reading it again from the start.

    Args:
      info: the Examples artifact.
      config: the trainer config.
      ctx: the input pipeline's context (`InputContext()` for one device).
      image_size: the training resolution.
      sigmoid: the loss is a sigmoid (sets the target smoothing form).
      image_dtype: the images' dtype on the way to the device (bfloat16
        under mixed_bfloat16: half the transfer).

    Returns:
      A dataset of (images [b, S, S, 3], targets float32 [b, C]), b being
      the per-replica batch.
    """
    per_replica = ctx.get_per_replica_batch_size(config.batch_size)
    files = info.split_files(config.data.train_split)
    pipeline = ctx.input_pipeline_id
    seed = config.seed * 1_000_003 + pipeline
    ds = _records(
        files,
        _configured_compression(info, config),
        ctx,
        config.data.cycle_length,
        config.data.block_length,
        shuffle_seed=seed,
        deterministic=config.deterministic,
        repeat=True,
    )
    ds = ds.shuffle(config.data.shuffle_buffer_size, seed=seed + 1)
    aug, num_classes = config.augment, info.num_classes
    smoothing = config.loss.label_smoothing
    mixup = aug.mixup_alpha > 0 or aug.cutmix_alpha > 0
    if mixup and info.multi_label:
        raise ValueError(
            "Mixup/CutMix need single-label examples; set "
            "augment.mixup_alpha=0 and augment.cutmix_alpha=0 for "
            "multi-label data."
        )

    @_plain
    def preprocess(index, serialized):
        key = rng.element_key(config.seed, rng.EXAMPLE_STREAM, pipeline, index)
        ex = parse_example(serialized)
        image = augment_lib.preprocess_for_train(
            ex["image"], image_size, aug, key
        )
        if mixup:
            return image, ex["labels"][0]
        return image, _target(ex, info, smoothing, sigmoid)

    # The position is counted after the shuffle: it numbers the examples
    # in the order training sees them.
    ds = ds.enumerate().map(
        preprocess,
        num_parallel_calls=config.data.num_parallel_calls,
        deterministic=config.deterministic,
    )
    ds = ds.batch(per_replica, drop_remainder=True)
    if mixup:
        mix = augment_lib.BatchMixup(
            num_classes, aug.mixup_alpha, aug.cutmix_alpha, smoothing
        )

        @_plain
        def mix_batch(index, batch):
            key = rng.element_key(
                config.seed, rng.BATCH_STREAM, pipeline, index
            )
            return mix(*batch, key)

        ds = ds.enumerate().map(
            mix_batch,
            num_parallel_calls=config.data.num_parallel_calls,
            deterministic=config.deterministic,
        )
    if image_dtype != tf.float32:
        ds = ds.map(lambda x, y: (tf.cast(x, image_dtype), y))
    ds = ds.prefetch(config.data.prefetch_batches)
    options = _options(config)
    # An iterator checkpoint of this stream must hold all of its state.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.FAIL
    )
    return ds.with_options(options)


def _target(
    ex: dict[str, tf.Tensor],
    info: ExamplesInfo,
    smoothing: float,
    sigmoid: bool,
) -> tf.Tensor:
    """The dense target row of one parsed example (see augment)."""
    if info.multi_label:
        return augment_lib.multi_hot_target(
            ex["labels"],
            info.num_classes,
            ex["scores"],
            smoothing if sigmoid else 0.0,
        )
    if sigmoid:
        return augment_lib.multi_hot_target(
            ex["labels"][:1], info.num_classes, None, smoothing
        )
    return augment_lib.single_label_target(
        ex["labels"][0], info.num_classes, smoothing
    )


def eval_steps(
    info: ExamplesInfo, config: config_lib.TrainerConfig, global_batch: int
) -> int:
    """Global evaluation batches: `config.eval_steps`, else the whole split.

    Raises:
      ValueError: the split's size is unknown and `eval_steps` is 0.
    """
    if config.eval_steps > 0:
        return config.eval_steps
    n = info.num_examples.get(config.data.eval_split, 0)
    if n <= 0:
        raise ValueError(
            f"The Examples artifact does not say how many "
            f"{config.data.eval_split!r} examples it holds; set eval_steps."
        )
    return -(-n // global_batch)


def eval_dataset(
    info: ExamplesInfo,
    config: config_lib.TrainerConfig,
    ctx: tf.distribute.InputContext,
    image_size: int,
    global_batch: int,
    num_batches: int,
    image_dtype: tf.DType = tf.float32,
) -> tf.data.Dataset:
    """Evaluation batches of one input pipeline, padded to static shapes.

    The split is read once in file order; `preprocessing.preprocess_for_eval`
    makes the input; the pipeline's share is padded with zero-weight
    examples up to exactly `num_batches` global batches.

    Args:
      info: the Examples artifact.
      config: the trainer config.
      ctx: the input pipeline's context.
      image_size: the model's resolution.
      global_batch: the global evaluation batch.
      num_batches: global batches to produce.
      image_dtype: the images' dtype on the way to the device.

    Returns:
      A dataset of (images [b, S, S, 3], targets [b, C] without smoothing,
      weights [b]).
    """
    per_replica = ctx.get_per_replica_batch_size(global_batch)
    files = info.split_files(config.data.eval_split)
    ds = _records(
        files,
        _configured_compression(info, config),
        ctx,
        config.data.cycle_length,
        1,
        shuffle_seed=None,
        deterministic=True,
        repeat=False,
    )

    @_plain
    def preprocess(serialized):
        ex = parse_example(serialized)
        image = preprocessing.preprocess_for_eval(ex["image"], image_size)
        return image, _target(ex, info, 0.0, False), tf.constant(1.0)

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
    padding = tf.data.Dataset.from_tensors(
        (
            tf.zeros([image_size, image_size, 3]),
            tf.zeros([info.num_classes]),
            tf.constant(0.0),
        )
    ).repeat()
    count = num_batches * batches_per_step(ctx) * per_replica
    ds = ds.concatenate(padding).take(count)
    ds = ds.batch(per_replica, drop_remainder=True)
    if image_dtype != tf.float32:
        ds = ds.map(lambda x, y, w: (tf.cast(x, image_dtype), y, w))
    ds = ds.prefetch(AUTOTUNE)
    options = _options(config)
    options.deterministic = True
    return ds.with_options(options)


def synthetic_dataset(
    num_classes: int, image_size: int, per_replica_batch: int
) -> tf.data.Dataset:
    """An endless stream of one fixed batch of the training shapes.

    The benchmark's baseline: the train step on this measures the step
    alone, with no decoding or augmentation.
    """
    images = tf.random.stateless_normal(
        [per_replica_batch, image_size, image_size, 3], seed=[1, 2]
    )
    labels = tf.random.stateless_uniform(
        [per_replica_batch], seed=[3, 4], maxval=num_classes, dtype=tf.int32
    )
    targets = tf.one_hot(labels, num_classes)
    return tf.data.Dataset.from_tensors((images, targets)).repeat()


def distribute(
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
) -> Any:
    """Builds one pipeline per input worker and distributes its batches."""
    return strategy.distribute_datasets_from_function(
        dataset_fn,
        options=tf.distribute.InputOptions(
            experimental_fetch_to_device=True,
            experimental_per_replica_buffer_size=2,
        ),
    )
