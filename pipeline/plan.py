r"""The plan of a run: `bazel run //pipeline:plan -- <the flags of a run>`.

    bazel run //pipeline:plan -- --preset=i21k_to_i1k --variant=coatnet-2 \
      --input='gs://b/i21k/{SPAN}' --finetune_input=gs://b/i1k/train \
      --tpu_topology=v3-32 [--format=json]

Reads no image and starts no training: prints the resolved config as a
diff against its preset and, per stage, the examples, steps, epochs, batch
layout, shards, input rate per host, checkpoint sizes and an estimate of
the hours (pipeline/plan_lib.py). Settings that cannot work are listed
instead, with exit code 2, as the run itself would refuse them.

Flags of its own: --job (pretrain, finetune, retrain), --tpu_topology
(v3-32, v4-64, v5e-16, ...), --utilization (assumed share of the bf16
peak), --expected_examples=[stage=]N, --examples=stage=<Examples artifact>,
--format=text|json.
"""

from pipeline import console

console.quiet_unless_verbose()

import json  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from configs import tpu_topologies  # noqa: E402
from pipeline import config as config_lib  # noqa: E402
from pipeline import flags_lib, plan_checks, plan_lib  # noqa: E402

flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
flags.DEFINE_enum(
    "job", "pretrain", ["pretrain", "finetune", "retrain"], "The job planned."
)
flags.DEFINE_string(
    "tpu_topology", "", "TPU slice, e.g. v3-32, v4-64, v5e-16, v5p-128."
)
flags.DEFINE_float(
    "utilization",
    plan_lib.DEFAULT_UTILIZATION,
    "Assumed share of the TPU's bf16 peak a training step reaches.",
)
flags.DEFINE_multi_string(
    "expected_examples", [], "[stage=]N training examples (default pretrain)."
)
flags.DEFINE_multi_string(
    "examples", [], "stage=URI of an existing Examples artifact."
)
flags.DEFINE_string("base_model", "", "Unused by the plan (finetune's flag).")

FLAGS = flags.FLAGS
EXIT_REFUSED = 2


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = flags_lib.config_from_flags()
        topology = None
        if FLAGS.tpu_topology:
            topology = tpu_topologies.parse(FLAGS.tpu_topology)
        expected = {
            stage: int(value.replace(",", "").replace("_", ""))
            for stage, value in plan_lib.parse_stage_values(
                FLAGS.expected_examples, "expected_examples"
            ).items()
        }
        stages = config_lib.stage_names(config, FLAGS.job)
        found = plan_checks.missing_required(config) + plan_checks.problems(
            config,
            stages,
            topology.replicas if topology else 0,
            on_tpu=topology is not None,
        )
        if found:
            # No numbers for a run that cannot start.
            raise ValueError(
                "refused: settings that cannot work:\n"
                + "\n".join(f"  - {p}" for p in found)
            )
        plan = plan_lib.make_plan(
            config,
            stages,
            topology,
            FLAGS.utilization,
            plan_lib.parse_stage_values(FLAGS.examples, "examples"),
            expected,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    if FLAGS.format == "json":
        print(json.dumps(plan, indent=1))
    else:
        print(plan_lib.format_text(plan))
    sys.exit(EXIT_REFUSED if plan["problems"] else 0)


if __name__ == "__main__":
    app.run(main)
