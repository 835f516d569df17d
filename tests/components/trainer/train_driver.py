"""Runs one training in its own process, for tests that need a fresh runtime.

Logical CPU devices and op determinism are process-wide and fixed once
TensorFlow starts, so tests that need them (MirroredStrategy over two
logical CPUs, bit-exact comparisons) train here and read back the JSON
this writes: the per-log-interval history and the evaluation.

    python -m tests.components.trainer.train_driver \
        --examples=... --output=... \
        --overrides='{"train_steps": 8}' --cpus=2 --result=out.json
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("examples", None, "Examples artifact.")
flags.DEFINE_string("output", None, "Model artifact directory.")
flags.DEFINE_string("config", "tiny", "Recipe name.")
flags.DEFINE_string("overrides", "{}", "JSON of dotted-field overrides.")
flags.DEFINE_integer("cpus", 1, "Logical CPU devices to create.")
flags.DEFINE_string("result", None, "Where to write the result JSON.")


def main(argv):
    del argv  # Unused.
    import tensorflow as tf

    # Before any other TensorFlow work: the devices are fixed at start-up.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpus
    )
    import configs
    from components import base
    from components.trainer import train_lib

    config = base.apply_overrides(
        configs.get_config(FLAGS.config), json.loads(FLAGS.overrides)
    )
    examples = base.Artifact.read(FLAGS.examples, base.EXAMPLES)
    result, trainer = train_lib.run(config, examples, FLAGS.output)
    with open(FLAGS.result, "w") as f:
        json.dump(
            {
                "replicas": trainer.strategy.num_replicas_in_sync,
                "history": result.history,
                "eval": result.eval_metrics,
                "step": result.step,
            },
            f,
        )


if __name__ == "__main__":
    app.run(main)
