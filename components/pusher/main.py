r"""Pusher CLI: publishes a blessed, exported model to a TF Serving store.

  bazel run //components:pusher -- \
    --model=RUN/Exporter/1/model --blessing=RUN/Evaluator/1/blessing \
    --infra_blessing=RUN/Exporter/1/infra_blessing \
    --serving_base=/srv/models --model_name=coatnet --keep_versions=3 \
    --output=RUN/Pusher/1

Writes `<serving_base>/<model_name>/<version>/` when blessed, and the
PushedModel artifact `<output>/pushed_model` either way.
"""

from __future__ import annotations

from absl import app, flags

from components import base, cli
from components.pusher import component as pusher

_MODEL = flags.DEFINE_string("model", "", "The Exporter's Model artifact.")
_BLESSING = flags.DEFINE_string("blessing", "", "The Evaluator's blessing.")
_INFRA = flags.DEFINE_string(
    "infra_blessing", "", "The Exporter's infra blessing (optional)."
)
_BASE = flags.DEFINE_string("serving_base", None, "Model store root.")
_NAME = flags.DEFINE_string("model_name", None, "Served model name.")
_KEEP = flags.DEFINE_integer("keep_versions", None, "Versions kept; 0: all.")
_VERSIONING = flags.DEFINE_enum(
    "versioning", None, list(pusher.VERSIONING), "Version numbering."
)
_CONFIG = flags.DEFINE_string("config_file", "", "PusherConfig JSON.")
_OUTPUT = flags.DEFINE_string(
    "output",
    "",
    "Where to write pushed_model/ (default: $COATNET_HOME/Pusher/<time>).",
)
_SET = flags.DEFINE_multi_string(
    "set", [], "field=value override of the config, after --config_file."
)
cli.define_renamed_flag("output_dir", "output")


def build_config() -> tuple[pusher.PusherConfig, dict]:
    """The config from --config_file and flags, and the input artifacts."""
    values = dict(cli.load_config_overrides(_CONFIG.value))
    if _BASE.value is not None:
        values["serving_base"] = cli.resolve_user_path(_BASE.value)
    values.update(
        cli.given(
            {
                "model_name": _NAME,
                "keep_versions": _KEEP,
                "versioning": _VERSIONING,
            }
        )
    )
    inputs = cli.read_input_artifacts(
        {
            "model": (_MODEL, base.MODEL),
            "blessing": (_BLESSING, base.MODEL_BLESSING),
            "infra_blessing": (_INFRA, base.MODEL_BLESSING),
        },
        optional=("infra_blessing",),
    )
    return cli.component_config(pusher.PusherConfig, values, _SET.value), inputs


def main(argv):
    del argv  # Unused.
    cli.apply_renamed_flags()
    config, inputs = build_config()
    if not config.serving_base:
        raise app.UsageError("--serving_base is required.")
    cli.run_component(
        pusher.Pusher(), inputs, config, _OUTPUT.value, ["pushed_model"]
    )


if __name__ == "__main__":
    app.run(main)
