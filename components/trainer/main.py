"""Trainer CLI: `bazel run //components/trainer:trainer -- --examples=...`.

    --examples=<Examples artifact> --output=<Model artifact dir>
    --config=<recipe of configs/, e.g. pretrain_i21k, or a preset's stage,
             e.g. i21k_to_i1k.finetune>
    --config_file=<JSON: a partial TrainerConfig, optionally with
             "base": "<recipe or preset.stage>"; an `_execution.json`
             works too>
    --variant --image_size --batch_size --train_steps --train_epochs
    --strategy=default|mirrored|multi_worker|tpu --tpu --zone --project
    --precision --base_model=<Model artifact> --init_checkpoint --seed
    --set=optimizer.learning_rate=5e-5 (repeatable; old spelling:
    --config_override)

Running it again with the same --output resumes from the latest
checkpoint, if it is the same run (same config, examples and model; see
`fingerprint.py`); a different run refuses to resume another's. The default
--output ends with the run's fingerprint hash, so different runs get
different directories. In a multi-worker run every worker runs the same
command; only the chief records the artifact.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags, logging  # noqa: E402

from components import base, cli  # noqa: E402
from components.trainer import component as component_lib  # noqa: E402
from components.trainer import config as config_lib  # noqa: E402
from components.trainer import fingerprint  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("examples", None, "The Examples artifact to train on.")
flags.DEFINE_string(
    "output",
    None,
    "The Model artifact's directory; resumes when it holds checkpoints. "
    "Default: $COATNET_HOME (or ~/coatnet_runs)/trainer/<config>-<hash>, "
    "the hash being the run's fingerprint (config, examples, base model).",
)
flags.DEFINE_string(
    "config",
    "pretrain_i1k",
    "A recipe of configs/ or a preset stage (i21k_to_i1k.finetune).",
)
flags.DEFINE_string(
    "config_file",
    "",
    'A JSON TrainerConfig (partial); its "base" names a recipe or preset '
    "stage. Beats --config.",
)
flags.DEFINE_multi_string(
    "set", [], "field.path=value, e.g. optimizer.ema_decay=0.9999."
)
cli.define_renamed_flag("config_override", "set")
flags.DEFINE_string("base_model", None, "A Model artifact to finetune from.")
flags.DEFINE_string("init_checkpoint", None, "A checkpoint to finetune from.")
flags.DEFINE_string("variant", None, "coatnet-0 ... coatnet-7, coatnet-tiny.")
flags.DEFINE_integer("image_size", None, "Training resolution.")
flags.DEFINE_integer("batch_size", None, "Global training batch.")
flags.DEFINE_integer("train_steps", None, "Training steps (beats epochs).")
flags.DEFINE_float("train_epochs", None, "Training epochs.")
flags.DEFINE_string("strategy", None, "default|mirrored|multi_worker|tpu.")
flags.DEFINE_string("tpu", None, "TPU name or address; 'local' on a TPU VM.")
flags.DEFINE_string("zone", None, "The TPU's GCP zone.")
flags.DEFINE_string("project", None, "The TPU's GCP project.")
flags.DEFINE_string("precision", None, "auto|float32|mixed_bfloat16.")
flags.DEFINE_integer("seed", None, "Random seed.")

# Typed flags and the config fields they set.
_FLAG_FIELDS = {
    "variant": "model.variant",
    "image_size": "model.image_size",
    "batch_size": "batch_size",
    "train_steps": "train_steps",
    "train_epochs": "train_epochs",
    "strategy": "runtime.strategy",
    "tpu": "runtime.tpu",
    "zone": "runtime.zone",
    "project": "runtime.project",
    "precision": "runtime.precision",
    "seed": "seed",
    "init_checkpoint": "finetune.init_checkpoint",
}


def load_config(name_or_path: str, overrides: dict) -> config_lib.TrainerConfig:
    """`components.trainer.config.load` (kept for callers of this module)."""
    return config_lib.load(name_or_path, overrides)


def default_output(
    config_flag: str,
    config: config_lib.TrainerConfig,
    examples: base.Artifact,
    base_model: base.Artifact | None,
) -> str:
    """`<home>/trainer/<recipe>-<fingerprint hash>`: one directory per run.

    Args:
      config_flag: the --config value (a recipe name or a JSON path).
      config: the resolved config.
      examples: the Examples artifact.
      base_model: the Model artifact finetuned from, if any.

    Returns:
      The default output directory.
    """
    recipe = os.path.splitext(os.path.basename(config_flag))[0]
    run = fingerprint.digest(fingerprint.compute(config, examples, base_model))
    return os.path.join(cli.default_home(), "trainer", f"{recipe}-{run}")


def main(argv):
    del argv  # Unused.
    cli.apply_renamed_flags()
    overrides = cli.parse_set_flags(FLAGS.set)
    for flag, field in _FLAG_FIELDS.items():
        value = FLAGS[flag].value
        if value is not None:
            overrides[field] = value
    try:
        config = config_lib.load(FLAGS.config_file or FLAGS.config, overrides)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    # The strategy first: multi-worker and TPU set-up must precede any
    # other TensorFlow work in the process.
    from components.trainer import strategy as strategy_lib

    rt = config.runtime
    strategy = strategy_lib.create_strategy(
        rt.strategy, rt.tpu, rt.zone, rt.project
    )
    examples = cli.read_input_artifact(
        FLAGS.examples, base.EXAMPLES, "examples"
    )
    inputs = {"examples": examples}
    if FLAGS.base_model:
        inputs["base_model"] = cli.read_input_artifact(
            FLAGS.base_model, base.MODEL, "base_model"
        )
    output = FLAGS.output or default_output(
        FLAGS.config_file or FLAGS.config,
        config,
        examples,
        inputs.get("base_model"),
    )
    output = cli.check_output_location(cli.resolve_user_path(output), "output")
    component = component_lib.Trainer(strategy)
    if not strategy_lib.is_chief(strategy):
        # Non-chief workers train in lockstep but record nothing.
        outputs = {"model": base.Artifact(base.MODEL, output)}
        component.run(inputs, outputs, config)
        logging.info("Worker done.")
        return
    outputs = base.execute(component, inputs, {"model": output}, config)
    cli.print_outputs(outputs)


if __name__ == "__main__":
    app.run(main)
