"""Scheduled retraining: `bazel run //pipeline:retrain`.

Takes the latest span, warm-starts from the last blessed model, evaluates
against the pushed model and pushes only if blessed. Idempotent and locked
against concurrent runs; safe from cron or Cloud Scheduler. Library:
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
    runner.exit_with(runner.run_job("retrain", config))


if __name__ == "__main__":
    app.run(main)
