"""Finetuning: `bazel run //pipeline:finetune`.

From a pretrained Model (--base_model, default the newest in the store), at
a higher resolution (bias tables resized), on the finetune label space.
Library: pipeline/runner.py.

Exit codes: 0 done, 10 candidate not blessed (served version kept),
75 another run holds the lock, 1 a component failed, 2 bad flags.
"""

from pipeline import console

console.quiet_unless_verbose()

from absl import app, flags  # noqa: E402

from pipeline import flags_lib  # noqa: E402

flags.DEFINE_string(
    "base_model",
    "",
    "Model artifact to finetune (default: the newest pretrained model).",
)

if __name__ == "__main__":
    app.run(flags_lib.main_for("finetune"))
