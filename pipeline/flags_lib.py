"""The flags every pipeline binary shares, parsed into a PipelineConfig.

Precedence, lowest first: the preset (`--preset`, or the "base" of a JSON
`--config_file`; `demo` when no data is given), the rest of the JSON file
(any partial tree of `PipelineConfig` fields), each `--set
field.path=value`, then the first-class flags below. The resolved config
is written next to the run's outputs. A run given `--input` must name its
preset: a real run never inherits the demo's settings silently.

`//pipeline:plan` takes the same flags (`define_plan_flags` adds its own).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

from components import cli
from configs import presets
from pipeline import config as config_lib

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "preset",
    "",
    "The run's preset (configs/presets.py): demo, i21k_to_i1k, i1k, "
    "jft_to_i1k. Required with --input.",
)
flags.DEFINE_string(
    "config_file",
    "",
    'JSON file with PipelineConfig fields to override; "base" names a preset.',
)
flags.DEFINE_multi_string(
    "set", [], "field.path=value override, e.g. --set=pretrain.batch_size=64."
)
flags.DEFINE_string(
    "output", "", "Pipeline root: artifacts, ledger and reports (or gs://)."
)
flags.DEFINE_string("serving_base", "", "TF Serving model store root.")
flags.DEFINE_bool(
    "demo", None, "Use the built-in digits data when --input is empty."
)
flags.DEFINE_string("source", "", "ExampleGen source mode of --input.")
flags.DEFINE_string("input", "", "Pretraining data (may hold {SPAN}).")
flags.DEFINE_string("finetune_input", "", "Finetuning data.")
flags.DEFINE_string("finetune_synsets", "", "Finetune label space file.")
flags.DEFINE_string("variant", "", "coatnet-0 ... coatnet-7, coatnet-tiny.")
flags.DEFINE_integer("pretrain_image_size", 0, "Pretraining resolution.")
flags.DEFINE_integer("finetune_image_size", 0, "Finetuning resolution.")
flags.DEFINE_string(
    "strategy", "", "tpu, mirrored, multi_worker or default (both stages)."
)
flags.DEFINE_string("tpu", "", "TPU name, or 'local' on a TPU VM.")
flags.DEFINE_string("zone", "", "TPU zone.")
flags.DEFINE_string("project", "", "GCP project of the TPU.")
flags.DEFINE_bool("cache", True, "Skip components whose inputs are unchanged.")
flags.DEFINE_float(
    "bless_floor",
    None,
    "Blessing floor of the served model's gated metric (e.g. top1 >= 0.8); "
    "default: the preset's.",
)
flags.DEFINE_float(
    "bless_margin",
    None,
    "Largest regression of that metric against the served baseline that "
    "still blesses (e.g. 0.005); default: the preset's.",
)
cli.define_renamed_flag("pipeline_root", "output")
# The flag naming the pipeline root: --output, except in a binary whose
# --output is something else (`use_root_flag`).
_root_flag = "output"


def use_root_flag(name: str) -> None:
    """Names the pipeline root `--<name>` instead of `--output`.

    For //pipeline:compile, whose `--output` is the spec it writes while
    the pipeline root is a parameter of that spec. Call it at import time,
    before flags are parsed.

    Args:
      name: the flag that takes the pipeline root.
    """
    global _root_flag
    for old in ("output", "pipeline_root"):
        if old in FLAGS:
            delattr(FLAGS, old)
        cli.forget_renamed_flag(old)
    flags.DEFINE_string(
        name, "", "Pipeline root: artifacts, ledger and reports (or gs://)."
    )
    _root_flag = name


# The first-class flags and the dotted fields they set.
_PATH_FLAGS = {
    "input": ("data.input",),
    "finetune_input": ("finetune_data.input",),
    "finetune_synsets": ("finetune_data.synsets",),
}
_STAGE_FLAGS = {
    "variant": "model.variant",
    "strategy": "runtime.strategy",
    "tpu": "runtime.tpu",
    "zone": "runtime.zone",
    "project": "runtime.project",
}


def preset_name() -> str:
    """The preset the flags name, "" when none.

    Raises:
      ValueError: --preset and the config file's "base" disagree.
    """
    name = FLAGS.preset
    base_name = _config_file().get("base", "")
    if name and base_name and name != base_name:
        raise ValueError(
            f"--preset={name} but --config_file={FLAGS.config_file} has "
            f'"base": "{base_name}"; name one preset.'
        )
    return name or base_name


def _config_file() -> dict[str, Any]:
    return dict(cli.load_config_overrides(FLAGS.config_file))


def overrides_from_flags() -> dict[str, Any]:
    """The dotted overrides the flags give, in precedence order.

    Raises:
      ValueError: a --set item is malformed (naming it).
    """
    overrides = _config_file()
    overrides.pop("base", None)
    overrides.update(cli.parse_set_flags(FLAGS.set))
    overrides["enable_cache"] = FLAGS.cache
    for flag, field in (
        (_root_flag, "pipeline_root"),
        ("serving_base", "serving_base"),
    ):
        if FLAGS[flag].value:
            overrides[field] = cli.resolve_user_path(FLAGS[flag].value)
    if FLAGS.demo is not None:
        overrides["demo"] = FLAGS.demo
    for flag, fields in _PATH_FLAGS.items():
        if FLAGS[flag].value:
            for field in fields:
                overrides[field] = cli.resolve_user_path(FLAGS[flag].value)
    if FLAGS.source:
        overrides["data.source"] = FLAGS.source
        if not FLAGS.finetune_input:
            # The finetune stage reads the same data (a label subset).
            overrides["finetune_data.source"] = FLAGS.source
    for stage in ("pretrain", "finetune"):
        for flag, field in _STAGE_FLAGS.items():
            if FLAGS[flag].value:
                overrides[f"{stage}.{field}"] = FLAGS[flag].value
        size = FLAGS[f"{stage}_image_size"].value
        if size:
            overrides[f"{stage}.model.image_size"] = size
    if FLAGS.input and FLAGS.demo is None:
        overrides["demo"] = False
    return overrides


def config_from_flags() -> config_lib.PipelineConfig:
    """Builds the run's config from the parsed flags.

    Returns:
      The config.

    Raises:
      ValueError: --input without a preset, an unknown preset, an override
        naming an unknown field or not parsing; the message names the flag.
    """
    cli.apply_renamed_flags()
    name = preset_name()
    if not name:
        if FLAGS.input:
            raise ValueError(
                f"--input={FLAGS.input} needs --preset=NAME: a real run "
                "does not start from the demo's settings. Presets "
                f"(configs/presets.py):\n{presets.describe_presets()}\n"
                "See the plan first: bazel run //pipeline:plan -- "
                "--preset=NAME <the same flags>."
            )
        name = presets.DEFAULT
    overrides = overrides_from_flags()
    try:
        config = config_lib.preset_config(name, overrides)
    except ValueError as e:
        raise ValueError(
            f"--preset={name} with --config_file/--set: {e}"
        ) from e
    config = _with_gates(config, FLAGS.bless_floor, FLAGS.bless_margin)
    config_lib.check(config)
    if "://" not in config.root:
        cli.check_output_location(config.root, _root_flag)
    return config


def main_for(job: str) -> Callable[[list[str]], None]:
    """The absl `main` of a pipeline binary: flags to config, run, exit.

    Args:
      job: "pretrain", "finetune" or "retrain".

    Returns:
      A function for `app.run`.
    """

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        from pipeline import plan_checks, runner

        try:
            config = config_from_flags()
            plan_checks.refuse(config, job)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(runner.EXIT_USAGE) from e
        base_model = ""
        if job == "finetune" and FLAGS.base_model:
            base_model = cli.resolve_user_path(FLAGS.base_model)
        runner.exit_with(runner.run_job(job, config, base_model))

    return main


def _with_gates(config, floor: float | None, margin: float | None):
    """The served stage's gates with --bless_floor / --bless_margin set.

    The served stage is the finetune stage when it runs, else pretraining.
    A floor replaces the `lower_bound` of every value threshold; a margin
    sets every change threshold's `absolute` to `-margin`.
    """
    if floor is None and margin is None:
        return config
    name = "finetune_evaluator" if config.run_finetune else "evaluator"
    evaluator = getattr(config, name)
    gates = []
    for t in evaluator.thresholds:
        if t.is_change and margin is not None:
            t = dataclasses.replace(t, absolute=-abs(margin), relative=None)
        elif (
            not t.is_change and floor is not None and t.lower_bound is not None
        ):
            t = dataclasses.replace(t, lower_bound=floor)
        gates.append(t)
    return dataclasses.replace(
        config,
        **{name: dataclasses.replace(evaluator, thresholds=tuple(gates))},
    )
