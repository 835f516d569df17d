r"""Exporter CLI: a trained Model to a validated serving SavedModel.

  bazel run //components:exporter -- \
    --model=RUN/Trainer/model/1 --blessing=RUN/Evaluator/1/blessing \
    [--examples=RUN/ExampleGen/examples/1] --model_name=coatnet \
    [--serving_precision=bfloat16] --output=RUN/Exporter/1

Writes `<output>/model` (a Model artifact with `Format-Serving/`) and
`<output>/infra_blessing` (INFRA_BLESSED or INFRA_NOT_BLESSED).
`--config_file` takes `ExporterConfig` fields as JSON; flags override it.
"""

from __future__ import annotations

from absl import app, flags

from components import base, cli
from components.exporter import component as exporter
from components.exporter import serving_model

_MODEL = flags.DEFINE_string("model", "", "Trained Model artifact URI.")
_BLESSING = flags.DEFINE_string(
    "blessing", "", "The Evaluator's blessing (optional)."
)
_EXAMPLES = flags.DEFINE_string(
    "examples",
    "",
    "Examples: representative warmup images, and the labelled images a "
    "bfloat16 export's top-1 is checked on (required for bfloat16).",
)
_NAME = flags.DEFINE_string("model_name", None, "Serving model name.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Classes in top-k outputs.")
_BATCHES = flags.DEFINE_list(
    "warmup_batch_sizes", None, "Warmup batch sizes, e.g. 1,8."
)
_VALIDATE = flags.DEFINE_bool(
    "infra_validate", None, "Validate in a fresh serving process."
)
_PRECISION = flags.DEFINE_enum(
    "serving_precision",
    None,
    list(serving_model.SERVING_PRECISIONS),
    "What the exported model computes in; bfloat16 pays only where the "
    "serving hosts' bf16 matmuls outrun float32 (AMX, TPU, AVX512_BF16 on "
    "AMD EPYC; model_bench's peak_gflops tells).",
)
_MAX_TOP1_DROP = flags.DEFINE_float(
    "max_top1_drop",
    None,
    "A bfloat16 export whose top-1 on --examples is lower than the float32 "
    "model's by more than this is not infra-blessed (default 0.005).",
)
_CHECK_EXAMPLES = flags.DEFINE_integer(
    "precision_check_examples",
    None,
    "Images of the examples' evaluation split the top-1 check scores.",
)
_CONFIG = flags.DEFINE_string("config_file", "", "ExporterConfig JSON.")
_OUTPUT = flags.DEFINE_string(
    "output",
    "",
    "Where to write model/ and infra_blessing/ (default: "
    "$COATNET_HOME/Exporter/<time>).",
)
_SET = flags.DEFINE_multi_string(
    "set", [], "field=value override of the config, after --config_file."
)
cli.define_renamed_flag("output_dir", "output")


def build_config() -> tuple[exporter.ExporterConfig, dict]:
    """The config from --config_file and flags, and the input artifacts."""
    values = dict(cli.load_config_overrides(_CONFIG.value))
    values.update(
        cli.given(
            {
                "model_name": _NAME,
                "top_k": _TOP_K,
                "infra_validate": _VALIDATE,
                "serving_precision": _PRECISION,
                "max_top1_drop": _MAX_TOP1_DROP,
                "precision_check_examples": _CHECK_EXAMPLES,
            }
        )
    )
    if _BATCHES.value is not None:
        values["warmup_batch_sizes"] = [int(b) for b in _BATCHES.value]
    inputs = cli.read_input_artifacts(
        {
            "model": (_MODEL, base.MODEL),
            "blessing": (_BLESSING, base.MODEL_BLESSING),
            "examples": (_EXAMPLES, base.EXAMPLES),
        },
        optional=("blessing", "examples"),
    )
    config = cli.component_config(exporter.ExporterConfig, values, _SET.value)
    return config, inputs


def main(argv):
    del argv  # Unused.
    cli.apply_renamed_flags()
    config, inputs = build_config()
    cli.run_component(
        exporter.Exporter(),
        inputs,
        config,
        _OUTPUT.value,
        ["model", "infra_blessing"],
    )


if __name__ == "__main__":
    app.run(main)
