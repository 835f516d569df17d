r"""Evaluator CLI: evaluates a Model on an Examples split and blesses it.

  bazel run //components:evaluator -- \
    --examples=RUN/ExampleGen/examples/1 --model=RUN/Trainer/model/1 \
    [--baseline_model=SERVING_MODEL_ARTIFACT] \
    [--extra_examples=v2=V2_EXAMPLES --extra_examples=real=REAL@validation] \
    --value_thresholds=top1>=0.5 --change_thresholds=top1>=-0.001 \
    --output=RUN/Evaluator/1

Writes `<output>/evaluation` (metrics.json, PNGs) and
`<output>/blessing` (BLESSED or NOT_BLESSED). `--config_file` takes the
`EvaluatorConfig` fields as JSON (thresholds as a list of objects); flags
given on the command line override it.
"""

from __future__ import annotations

from absl import app, flags

from components import base, cli
from components.evaluator import blessing as blessing_lib
from components.evaluator import component as evaluator

_EXAMPLES = flags.DEFINE_string("examples", "", "Examples artifact URI.")
_MODEL = flags.DEFINE_string("model", "", "Model artifact URI.")
_BASELINE = flags.DEFINE_string(
    "baseline_model",
    "",
    "Model artifact of the currently pushed model; empty: value thresholds "
    "only.",
)
_EXTRA = flags.DEFINE_multi_string(
    "extra_examples",
    [],
    "Extra evaluation sets as NAME=URI or NAME=URI@SPLIT (at most "
    f"{len(evaluator.EXTRA_INPUTS)}).",
)
_SPLIT = flags.DEFINE_string("split", None, "Main evaluation split.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Images per batch.")
_MAX = flags.DEFINE_integer("max_examples", None, "0: every image.")
_VALUE = flags.DEFINE_list(
    "value_thresholds", [], "e.g. top1>=0.7,ece<=0.1 (see blessing.py)."
)
_CHANGE = flags.DEFINE_list(
    "change_thresholds",
    [],
    "Against the baseline, e.g. top1>=-1e-10 or loss<=5% (relative).",
)
_CONFIG = flags.DEFINE_string("config_file", "", "EvaluatorConfig JSON.")
_OUTPUT = flags.DEFINE_string(
    "output",
    "",
    "Where to write evaluation/ and blessing/ (default: "
    "$COATNET_HOME/Evaluator/<time>).",
)
_SET = flags.DEFINE_multi_string(
    "set", [], "field=value override of the config, after --config_file."
)
cli.define_renamed_flag("output_dir", "output")


def build_config() -> tuple[evaluator.EvaluatorConfig, dict]:
    """The config from --config_file and flags, and the input artifacts."""
    values = dict(cli.load_config_overrides(_CONFIG.value))
    values.update(
        cli.given({"split": _SPLIT, "batch_size": _BATCH, "max_examples": _MAX})
    )
    thresholds = blessing_lib.parse_thresholds(_VALUE.value, _CHANGE.value)
    if thresholds:
        values["thresholds"] = list(thresholds)
    inputs = cli.read_input_artifacts(
        {
            "examples": (_EXAMPLES, base.EXAMPLES),
            "model": (_MODEL, base.MODEL),
            "baseline_model": (_BASELINE, base.MODEL),
        },
        optional=("baseline_model",),
    )
    if len(_EXTRA.value) > len(evaluator.EXTRA_INPUTS):
        raise ValueError(
            f"At most {len(evaluator.EXTRA_INPUTS)} --extra_examples."
        )
    names, splits = [], []
    for key, spec in zip(evaluator.EXTRA_INPUTS, _EXTRA.value):
        name, sep, uri = spec.partition("=")
        if not sep or not name or not uri:
            raise ValueError(
                f"--extra_examples={spec}: expected NAME=URI[@SPLIT]."
            )
        uri, _, split = uri.partition("@")
        inputs[key] = cli.read_input_artifact(
            uri, base.EXAMPLES, "extra_examples"
        )
        names.append(name)
        splits.append(split)
    if names:
        values["extra_names"] = names
        values["extra_splits"] = splits
    config = cli.component_config(evaluator.EvaluatorConfig, values, _SET.value)
    return config, inputs


def main(argv):
    del argv  # Unused.
    cli.apply_renamed_flags()
    config, inputs = build_config()
    cli.run_component(
        evaluator.Evaluator(),
        inputs,
        config,
        _OUTPUT.value,
        ["evaluation", "blessing"],
    )


if __name__ == "__main__":
    app.run(main)
