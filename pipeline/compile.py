r"""Compiles a pipeline for Kubeflow Pipelines / Vertex AI Pipelines.

    bazel run //pipeline:compile -- --job=retrain --preset=i21k_to_i1k \
      --pipeline_root=gs://my-bucket/coatnet --input=gs://my-bucket/data/... \
      --image=us-docker.pkg.dev/my-project/coatnet/pipeline:latest \
      --output=retrain.yaml

Takes the same flags as a run (`pipeline:pretrain` and friends: --set,
--config_file, --input, --strategy, ...), builds the same DAG and writes its
KFP v2 spec (pipeline/kfp_compile.py). The demo's built-in data is written
by the local runner at run time, so compiling needs --input (or
data.input in the config). Library: pipeline/kfp_compile.py.

Exit codes: 0 written, 2 bad flags or config.
"""

import dataclasses
import os

from pipeline import console

console.quiet_unless_verbose()
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags, logging  # noqa: E402

from components import base, cli  # noqa: E402
from pipeline import config as config_lib  # noqa: E402
from pipeline import flags_lib, kfp_compile, pipelines, runner  # noqa: E402

FLAGS = flags.FLAGS
# --output is the spec; the pipeline root, a parameter of it, is named so.
flags_lib.use_root_flag("pipeline_root")
flags.DEFINE_enum("job", "pretrain", list(runner.JOBS), "The DAG to compile.")
flags.DEFINE_string("output", "", "The YAML spec to write (local or gs://).")
flags.DEFINE_string(
    "image", kfp_compile.DEFAULT_IMAGE, "The container image of every step."
)
flags.DEFINE_string(
    "base_model",
    "",
    "finetune: a Model artifact URI to start from (default: the newest "
    "pretrained model in the ledger, resolved at run time).",
)
_DEFAULT_RESOURCES = kfp_compile.Resources()
flags.DEFINE_string(
    "accelerator_type",
    _DEFAULT_RESOURCES.accelerator_type,
    "What a Trainer with --strategy=tpu asks for, e.g. TPU_V3.",
)
flags.DEFINE_integer(
    "accelerator_count",
    _DEFAULT_RESOURCES.accelerator_count,
    "TPU chips of a Trainer with --strategy=tpu.",
)
flags.DEFINE_string(
    "cpu_limit", _DEFAULT_RESOURCES.cpu_limit, "CPUs of a TPU Trainer."
)
flags.DEFINE_string(
    "memory_limit", _DEFAULT_RESOURCES.memory_limit, "Memory of a TPU Trainer."
)


def compile_config(
    job: str, config: config_lib.PipelineConfig
) -> config_lib.PipelineConfig:
    """The run's config as the compiled steps see it (no I/O here).

    As `runner.prepare_data`, the finetune data defaults to the pretraining
    data; spans are left as patterns, which ExampleGen resolves to the
    latest at run time.

    Args:
      job: the job compiled.
      config: the config from the flags.

    Returns:
      The config to compile.

    Raises:
      ValueError: no data input (the demo's data is written by the local
        runner, not by a compiled pipeline).
    """
    if not config.data.input:
        raise ValueError(
            "--input (data.input) is required to compile: a compiled "
            "pipeline reads its data from there (the built-in demo data is "
            "written only by the local runner; see README, Pipelines)."
        )
    if not config.finetune_data.input:
        config = dataclasses.replace(
            config,
            finetune_data=dataclasses.replace(
                config.finetune_data, input=config.data.input
            ),
        )
    if job == "retrain":
        config = dataclasses.replace(
            config,
            finetune_data=dataclasses.replace(
                config.finetune_data, span=None, version=None
            ),
        )
    return config


def compile_from_flags() -> dict:
    """The spec the flags describe.

    Returns:
      The compiled spec.

    Raises:
      ValueError: bad flags or config, naming the flag.
    """
    config = compile_config(FLAGS.job, flags_lib.config_from_flags())
    base_model = ""
    if FLAGS.base_model:
        if FLAGS.job != "finetune":
            raise ValueError("--base_model applies to --job=finetune only.")
        base_model = cli.resolve_user_path(FLAGS.base_model)
    if base_model:
        # A fixed artifact: imported by URI in the spec (read at run time).
        nodes = pipelines.finetune_nodes(
            config, base.Artifact(base.MODEL, base_model)
        )
    else:
        nodes = runner.build_nodes(FLAGS.job, config)
    resources = kfp_compile.Resources(
        accelerator_type=FLAGS.accelerator_type,
        accelerator_count=FLAGS.accelerator_count,
        cpu_limit=FLAGS.cpu_limit,
        memory_limit=FLAGS.memory_limit,
    )
    return kfp_compile.compile_spec(
        FLAGS.job, nodes, config, FLAGS.image, resources
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.output:
        raise app.UsageError("--output is required: the YAML file to write.")
    output = cli.resolve_user_path(FLAGS.output)
    try:
        spec = compile_from_flags()
    except ValueError as e:
        logging.error("%s", e)
        raise SystemExit(runner.EXIT_USAGE) from e
    kfp_compile.write_spec(spec, output)
    print(f"Wrote {output}: {spec['pipelineInfo']['name']}")


if __name__ == "__main__":
    app.run(main)
