"""The main job: `bazel run //pipeline:pretrain`.

ExampleGen, Trainer (pretrain), Evaluator, Exporter, Pusher, then (unless
--set=run_finetune=false) the finetune stage at the higher resolution. With
no flags it runs the built-in demonstration on the digits dataset. Library:
pipeline/runner.py.

Exit codes: 0 done, 10 candidate not blessed (served version kept),
75 another run holds the lock, 1 a component failed, 2 bad flags.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, logging  # noqa: E402

from pipeline import flags_lib, runner  # noqa: E402


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = flags_lib.config_from_flags()
    except ValueError as e:
        logging.error("%s", e)
        raise SystemExit(runner.EXIT_USAGE) from e
    runner.exit_with(runner.run_job("pretrain", config))


if __name__ == "__main__":
    app.run(main)
