"""The flags every pipeline binary shares, parsed into a PipelineConfig.

Precedence, lowest first: the demo (or `--nodemo` production) defaults, a
JSON `--config_file` (any partial tree of `PipelineConfig` fields), each
`--set field.path=value`, then the first-class flags below. The resolved
config is written next to the run's outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from absl import app, flags, logging

from components import cli
from pipeline import config as config_lib
from pipeline import runner

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "config_file", "", "JSON file with PipelineConfig fields to override."
)
flags.DEFINE_multi_string(
    "set", [], "field.path=value override, e.g. --set=pretrain.batch_size=64."
)
flags.DEFINE_string(
    "pipeline_root", "", "Artifacts, ledger and reports (local or gs://)."
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


def config_from_flags() -> config_lib.PipelineConfig:
    """Builds the run's config from the parsed flags.

    Returns:
      The config.

    Raises:
      ValueError: an override names an unknown field or does not parse;
        the message names the flag.
    """
    config = config_lib.demo_config()
    overrides = cli.load_config_overrides(FLAGS.config_file)
    try:
        config = config_lib.apply(config, overrides)
    except ValueError as e:
        raise ValueError(f"--config_file={FLAGS.config_file}: {e}") from e
    for item in FLAGS.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set={item!r}: expected field.path=value.")
        try:
            config = config_lib.apply(config, {key.strip(): value})
        except ValueError as e:
            raise ValueError(f"--set={item!r}: {e}") from e
    changes: dict[str, object] = {"enable_cache": FLAGS.cache}
    if FLAGS.pipeline_root:
        changes["pipeline_root"] = cli.resolve_user_path(FLAGS.pipeline_root)
    if FLAGS.serving_base:
        changes["serving_base"] = cli.resolve_user_path(FLAGS.serving_base)
    if FLAGS.demo is not None:
        changes["demo"] = FLAGS.demo
    config = dataclasses.replace(config, **changes)
    data = {}
    if FLAGS.input:
        data["data.input"] = cli.resolve_user_path(FLAGS.input)
    if FLAGS.source:
        data["data.source"] = FLAGS.source
        data["finetune_data.source"] = FLAGS.source
    if FLAGS.finetune_input:
        data["finetune_data.input"] = cli.resolve_user_path(
            FLAGS.finetune_input
        )
    if FLAGS.finetune_synsets:
        data["finetune_data.synsets"] = cli.resolve_user_path(
            FLAGS.finetune_synsets
        )
    for stage in ("pretrain", "finetune"):
        if FLAGS.variant:
            data[f"{stage}.model.variant"] = FLAGS.variant
        for name in ("strategy", "tpu", "zone", "project"):
            if getattr(FLAGS, name):
                data[f"{stage}.runtime.{name}"] = getattr(FLAGS, name)
    if FLAGS.pretrain_image_size:
        data["pretrain.model.image_size"] = FLAGS.pretrain_image_size
    if FLAGS.finetune_image_size:
        data["finetune.model.image_size"] = FLAGS.finetune_image_size
    config = config_lib.apply(config, data)
    if FLAGS.input and FLAGS.demo is None:
        config = dataclasses.replace(config, demo=False)
    config_lib.check(config)
    if "://" not in config.root:
        cli.check_output_location(config.root, "pipeline_root")
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
        try:
            config = config_from_flags()
        except ValueError as e:
            logging.error("%s", e)
            raise SystemExit(runner.EXIT_USAGE) from e
        base_model = ""
        if job == "finetune" and FLAGS.base_model:
            base_model = cli.resolve_user_path(FLAGS.base_model)
        runner.exit_with(runner.run_job(job, config, base_model))

    return main
