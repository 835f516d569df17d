"""Scheduled retraining: `bazel run //pipeline:retrain`.

Takes the latest span, warm-starts from the last blessed model, evaluates
against the pushed model and pushes only if blessed. Idempotent and locked
against concurrent runs; safe from cron or Cloud Scheduler. Library:
pipeline/runner.py.

Exit codes: 0 done, 10 candidate not blessed (served version kept),
75 another run holds the lock, 1 a component failed, 2 bad flags.
"""

from pipeline import console

console.quiet_unless_verbose()

from absl import app  # noqa: E402

from pipeline import flags_lib  # noqa: E402

if __name__ == "__main__":
    app.run(flags_lib.main_for("retrain"))
