"""Finetuning: `bazel run //pipeline:finetune`.

From a pretrained Model (--base_model, default the newest in the store), at
a higher resolution (bias tables resized), on the finetune label space.
Library: pipeline/runner.py.

Exit codes: 0 done, 10 candidate not blessed (served version kept),
75 another run holds the lock, 1 a component failed, 2 bad flags.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags, logging  # noqa: E402

from pipeline import flags_lib, runner  # noqa: E402

flags.DEFINE_string(
    "base_model",
    "",
    "Model artifact to finetune (default: the newest pretrained model).",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = flags_lib.config_from_flags()
    except ValueError as e:
        logging.error("%s", e)
        raise SystemExit(runner.EXIT_USAGE) from e
    base_model = flags.FLAGS.base_model
    if base_model:
        from components import cli

        base_model = cli.resolve_user_path(base_model)
    runner.exit_with(runner.run_job("finetune", config, base_model))


if __name__ == "__main__":
    app.run(main)
