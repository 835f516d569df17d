"""The main job: `bazel run //pipeline:pretrain`.

ExampleGen, Trainer (pretrain), Evaluator, Exporter, Pusher, then (unless
--set=run_finetune=false) the finetune stage at the higher resolution. With
no flags it runs the built-in demonstration on the digits dataset. Library:
pipeline/runner.py.

Exit codes: 0 done, 10 candidate not blessed (served version kept),
75 another run holds the lock, 1 a component failed, 2 bad flags.
"""

from pipeline import console

console.quiet_unless_verbose()

from absl import app  # noqa: E402

from pipeline import flags_lib  # noqa: E402

if __name__ == "__main__":
    app.run(flags_lib.main_for("pretrain"))
