r"""Trainer input benchmark: the pipeline's rate, and whether it keeps up.

Prints one JSON object:

- `input`: images/s of the training input pipeline alone (read TFRecords,
  parse, inception crop decoding only the crop window, flip, resize,
  RandAugment, normalize, batch, Mixup), on generated photo-like JPEGs of
  ImageNet-like size written in ExampleGen's record format; and of the
  eval pipeline (`preprocess_for_eval`).
- `train_step`: seconds per training step of the same model and batch fed
  by that pipeline (`real`) and by one fixed in-memory batch
  (`synthetic`), interleaved in rounds so that the machine's load drifts
  alike for both; `slowdown` is real / synthetic - 1 on the medians,
  `goal` is 0.05; `headroom` is the pipeline's rate over the rate the
  step consumes images at (above 1: the step never waits for input).

On a TPU host the pipeline runs on the host's cores and the step on the
TPU. This CPU plays both parts, so the cores are split: the model's ops
run on `--device_threads` threads (the "accelerator") and the pipeline on
its own pool of the remaining cores (the "host"). Other processes on the
machine disturb both alike; `load_average_1m` says how much.

    bazel run //bench:input_bench                  # coatnet-0 at 224
    bazel run //bench:input_bench -- --short       # coatnet-tiny, 1 min
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from artifacts import examples as examples_lib
from components import base

flags.DEFINE_string("variant", "coatnet-0", "Model for the train step.")
flags.DEFINE_integer("image_size", 224, "Training resolution.")
flags.DEFINE_integer("batch_size", 8, "Global batch.")
flags.DEFINE_integer("num_images", 256, "Distinct images written.")
flags.DEFINE_integer("height", 375, "Generated image height.")
flags.DEFINE_integer("width", 500, "Generated image width.")
flags.DEFINE_integer("input_batches", 40, "Timed batches, input alone.")
flags.DEFINE_integer("steps", 2, "Timed train steps per round and input.")
flags.DEFINE_integer("rounds", 5, "Synthetic/real rounds.")
flags.DEFINE_integer("device_threads", 1, "Threads for the model's ops.")
flags.DEFINE_boolean("short", False, "coatnet-tiny at 64 px, small counts.")
FLAGS = flags.FLAGS


def photo(height: int, width: int, rng: np.random.Generator) -> bytes:
    """A photo-like JPEG: a smooth colour field with texture and edges."""
    coarse = rng.uniform(0, 255, (5, 7, 3)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(field, dtype=np.float32)
    pixels += rng.normal(0, 12, pixels.shape)
    y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
    pixels[y0 : y0 + height // 3, x0 : x0 + width // 3] *= 0.6
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        out, format="JPEG", quality=90
    )
    return out.getvalue()


def write_examples(root: str, count: int, num_classes: int) -> base.Artifact:
    """An Examples artifact of `count` photo-like images in 4 shards."""
    rng = np.random.default_rng(0)

    def records():
        for n in range(count):
            h = int(FLAGS.height * rng.uniform(0.8, 1.2))
            w = int(FLAGS.width * rng.uniform(0.8, 1.2))
            yield examples_lib.make_example(
                photo(h, w, rng), h, w, [n % num_classes], None, f"{n}"
            )

    examples_lib.write_split(root, "train", records(), 4, examples_lib.NONE)
    labels = [f"class_{i}" for i in range(num_classes)]
    examples_lib.write_labels(root, labels)
    artifact = base.Artifact(
        base.EXAMPLES,
        root,
        {
            "num_classes": num_classes,
            "multi_label": False,
            "num_examples": {"train": count, "validation": count},
            "compression": "NONE",
        },
    )
    # The eval pipeline reads the same shards as a validation split.
    shutil.copytree(
        examples_lib.split_dir(root, "train"),
        examples_lib.split_dir(root, "validation"),
    )
    artifact.write()
    return artifact


def input_rates(info, config, image_size: int) -> dict:
    """images/s of the train and eval pipelines on their own."""
    import tensorflow as tf

    from components.trainer import input_pipeline

    ctx = tf.distribute.InputContext()
    batch = config.batch_size
    train = input_pipeline.train_dataset(
        info, config, ctx, image_size, sigmoid=False
    )
    # One pass over the images: past it the eval stream is padding.
    eval_batches = info.num_examples["validation"] // batch
    evaluation = input_pipeline.eval_dataset(
        info, config, ctx, image_size, batch, eval_batches
    )
    out = {}
    for name, ds, batches in (
        ("train", train, FLAGS.input_batches),
        ("eval", evaluation, eval_batches),
    ):
        iterator = iter(ds)
        next(iterator)  # Warm-up: threads, autotuning, file opens.
        start = time.perf_counter()
        for _ in range(batches - 1):
            next(iterator)
        seconds = time.perf_counter() - start
        out[f"{name}_images_per_sec"] = round(
            (batches - 1) * batch / seconds, 1
        )
    return out


def step_times(trainer) -> dict:
    """Seconds per step on synthetic and on real input, in rounds."""
    from components.trainer import input_pipeline

    replicas = trainer.strategy.num_replicas_in_sync
    synthetic = iter(
        trainer.strategy.distribute_datasets_from_function(
            lambda ctx: input_pipeline.synthetic_dataset(
                trainer.info.num_classes,
                trainer.config.model.image_size,
                trainer.config.batch_size // replicas,
            )
        )
    )
    real = trainer.train_iterator()
    times = {"synthetic": [], "real": []}
    for iterator in (synthetic, real):
        trainer.run_steps(iterator, 2)  # Compile, fill the prefetch buffer.
    for _ in range(FLAGS.rounds):
        for name, iterator in (("synthetic", synthetic), ("real", real)):
            start = time.perf_counter()
            trainer.run_steps(iterator, FLAGS.steps)
            # Reading the step waits for the device to finish.
            float(trainer.metrics["loss"].result())
            times[name].append((time.perf_counter() - start) / FLAGS.steps)
    # The median round: robust to one round disturbed by other processes.
    s, r = (float(np.median(times[k])) for k in ("synthetic", "real"))
    return {
        "synthetic_s_per_step": round(s, 4),
        "real_s_per_step": round(r, 4),
        "rounds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "slowdown": round(r / s - 1, 4),
        "goal": 0.05,
        "within_goal": r / s - 1 <= 0.05,
        "consumed_images_per_sec": round(trainer.config.batch_size / s, 2),
    }


def main(argv: list[str]) -> None:
    del argv  # Unused.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    # Before TensorFlow starts: the model's ops get `device_threads`, the
    # input pipeline its own pool of the other cores.
    host_threads = max(1, (os.cpu_count() or 2) - FLAGS.device_threads)
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.device_threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.device_threads)

    import configs
    from components.trainer import input_pipeline, train_lib

    if FLAGS.short:
        FLAGS.variant, FLAGS.image_size, FLAGS.num_images = (
            "coatnet-tiny",
            64,
            64,
        )
        FLAGS.input_batches, FLAGS.steps, FLAGS.rounds = 12, 3, 3
    root = tempfile.mkdtemp(prefix="input_bench_")
    try:
        artifact = write_examples(
            os.path.join(root, "examples"), FLAGS.num_images, 1000
        )
        info = input_pipeline.read_examples_info(artifact)
        # The ImageNet-1K recipe's augmentation (RandAugment 2/15, Mixup
        # 0.8) at the benchmark's model, size and batch.
        config = base.apply_overrides(
            configs.get_config("pretrain_i1k"),
            {
                "model.variant": FLAGS.variant,
                "model.image_size": FLAGS.image_size,
                "batch_size": FLAGS.batch_size,
                "train_steps": 1000,
                "data.shuffle_buffer_size": FLAGS.num_images,
                "data.private_threadpool_size": host_threads,
                "runtime.precision": "float32",
            },
        )
        result = {
            "variant": FLAGS.variant,
            "image_size": FLAGS.image_size,
            "batch_size": FLAGS.batch_size,
            "source_image": [FLAGS.height, FLAGS.width],
            "cpus": os.cpu_count(),
            "device_threads": FLAGS.device_threads,
            "host_threads": host_threads,
            "input": input_rates(info, config, FLAGS.image_size),
        }
        trainer = train_lib.Trainer(
            config,
            info,
            os.path.join(root, "model"),
            tf.distribute.get_strategy(),
        )
        trainer.initialize()
        steps = step_times(trainer)
        steps["headroom"] = round(
            result["input"]["train_images_per_sec"]
            / steps["consumed_images_per_sec"],
            1,
        )
        result["train_step"] = steps
        result["load_average_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
