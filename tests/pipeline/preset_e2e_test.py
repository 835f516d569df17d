"""A real preset, scaled down, end to end on CPU.

i21k_to_i1k, driven through the pipeline binaries' flag handling, on a
small ImageNet-21K-style folder of per-synset tars (the digits, as the
demo writes them) and an ImageNet-1K-style class folder of five of those
synsets: the variant, resolutions, steps and batch are overridden down,
everything else (ExampleGen settings, sigmoid pretraining, softmax
finetuning with the 1K rows taken from the 21K head, gates, export,
push) comes from the preset and runs through the real components.
"""

import json
import os
import tarfile

import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from pipeline import demo_data, flags_lib, plan_checks, plan_lib, runner

FLAGS = flags.FLAGS
_FINETUNE_SYNSETS = demo_data.SYNSETS[:5]


def _write_data(root: str) -> tuple[str, str]:
    """A 21K-style span of tars and a 1K-style folder of five classes."""
    i21k = os.path.join(root, "i21k")
    span_dir = demo_data.write_span(i21k, 1, image_size=64, fraction=0.25)
    i1k = os.path.join(root, "i1k")
    _to_folders(span_dir, os.path.join(i1k, "train"))
    # The validation images: another rendering of the digits.
    other = demo_data.write_span(
        os.path.join(root, "other"), 2, image_size=64, fraction=0.1
    )
    _to_folders(other, os.path.join(i1k, "val"))
    return os.path.join(i21k, demo_data.SPAN_PATTERN), i1k


def _to_folders(span_dir: str, out: str) -> None:
    """Per-synset tars to `<out>/<synset>/*.JPEG` for the five classes."""
    for synset in _FINETUNE_SYNSETS:
        os.makedirs(os.path.join(out, synset))
        with tarfile.open(os.path.join(span_dir, f"{synset}.tar")) as tar:
            for member in tar.getmembers():
                name = os.path.join(out, synset, os.path.basename(member.name))
                with open(name, "wb") as f:
                    f.write(tar.extractfile(member).read())


def _argv(root: str, i21k: str, i1k: str, *extra: str) -> list[str]:
    in_memory = '["--direct_running_mode=in_memory"]'
    sets = {
        "data.validation_per_class": 8,
        "data.num_shards": 2,
        "data.num_eval_shards": 1,
        "data.beam_pipeline_args": in_memory,
        "finetune_data.num_shards": 2,
        "finetune_data.num_eval_shards": 1,
        "finetune_data.beam_pipeline_args": in_memory,
        "exporter.warmup_batch_sizes": "[1, 2]",
        # Tiny models on a few hundred digits cannot reach the preset's
        # floors; the no-regression gate stays as the preset has it.
        "evaluator.thresholds": '[{"metric": "precision_at_1", '
        '"lower_bound": 0.0}]',
        "finetune_evaluator.thresholds": '[{"metric": "top1", '
        '"lower_bound": 0.0}, {"metric": "top1", "direction": '
        '"higher_is_better", "absolute": -0.005}]',
    }
    for stage, steps in (("pretrain", 16), ("finetune", 8)):
        sets.update(
            {
                f"{stage}.train_steps": steps,
                f"{stage}.batch_size": 16,
                f"{stage}.eval_batch_size": 32,
                f"{stage}.schedule.warmup_steps": 2,
                f"{stage}.runtime.steps_per_execution": 1,
                f"{stage}.runtime.checkpoint_every_steps": 8,
                f"{stage}.data.shuffle_buffer_size": 64,
                f"{stage}.data.cycle_length": 2,
            }
        )
    return [
        "pretrain",
        "--preset=i21k_to_i1k",
        f"--input={i21k}",
        f"--finetune_input={i1k}/train",
        f"--set=finetune_data.validation_input={i1k}/val",
        "--variant=coatnet-tiny",
        "--pretrain_image_size=32",
        "--finetune_image_size=48",
        f"--output={root}",
        *(f"--set={k}={v}" for k, v in sets.items()),
        *extra,
    ]


class PresetEndToEndTest(tf.test.TestCase):
    def test_i21k_to_i1k_scaled_down(self):
        root = self.create_tempdir().full_path
        i21k, i1k = _write_data(root)
        with flagsaver.flagsaver():
            FLAGS.unparse_flags()
            FLAGS(_argv(root, i21k, i1k))
            config = flags_lib.config_from_flags()
        # coatnet-tiny has no Table 10 stochastic depth rate: refused.
        with self.assertRaisesRegex(ValueError, "drop_path_rate"):
            plan_checks.refuse(config, "pretrain")
        with flagsaver.flagsaver():
            FLAGS.unparse_flags()
            FLAGS(
                _argv(
                    root,
                    i21k,
                    i1k,
                    "--set=pretrain.model.drop_path_rate=0",
                    "--set=finetune.model.drop_path_rate=0",
                )
            )
            config = flags_lib.config_from_flags()
        plan_checks.refuse(config, "pretrain")
        # The preset's recipe, not the demo's.
        self.assertEqual(config.preset, "i21k_to_i1k")
        self.assertEqual(config.pretrain.loss.kind, "sigmoid")
        self.assertEqual(config.pretrain.model.head_init_bias, -10.0)
        self.assertEqual(config.finetune.optimizer.ema_decay, 0.9999)
        self.assertEqual(config.finetune.finetune.head_rows, "match")
        self.assertEqual(config.finetune_data.source, "image_folder")

        lines = []
        result = runner.run_job("pretrain", config, progress=lines.append)
        log = "\n".join(lines)
        self.assertEqual(result.exit_code, runner.EXIT_OK, log)
        stages = [(r.stage, r.resolution) for r in result.rows]
        self.assertEqual(stages, [("pretrain", 32), ("finetune", 48)])
        pretrained = result.result.outputs["Trainer.pretrain"]["model"]
        finetuned = result.result.outputs["Trainer.finetune"]["model"]
        self.assertEqual(pretrained.properties["num_classes"], 10)
        self.assertEqual(finetuned.properties["num_classes"], 5)
        examples = result.result.outputs["ExampleGen.finetune"]["examples"]
        self.assertEqual(examples.properties["source"], "image_folder")
        # Evaluated on the validation folder, not a hold-out of train.
        val_images = sum(
            len(files) for _, _, files in os.walk(os.path.join(i1k, "val"))
        )
        self.assertEqual(
            examples.properties["num_examples"]["validation"], val_images
        )
        served = os.path.join(config.serving, config.model_name)
        self.assertEqual(os.listdir(served), ["1"])
        # The plan of a rerun reads the sizes from the Examples artifact.
        pre_examples = result.result.outputs["ExampleGen.pretrain"]["examples"]
        plan = plan_lib.make_plan(
            config,
            ["pretrain"],
            artifacts={"pretrain": pre_examples.uri},
        )
        stage = plan["stages"][0]
        counts = pre_examples.properties["num_examples"]
        self.assertEqual(stage["examples"], counts["train"])
        self.assertEqual(stage["validation_examples"], counts["validation"])
        self.assertEqual(stage["classes"], 10)
        self.assertEqual(stage["shards"], 2)
        shard_bytes = sum(
            os.path.getsize(os.path.join(pre_examples.uri, "Split-train", f))
            for f in os.listdir(os.path.join(pre_examples.uri, "Split-train"))
        )
        self.assertAlmostEqual(
            stage["bytes_per_example"], shard_bytes / counts["train"]
        )
        self.assertEqual(stage["steps"], 16)
        run_dir = os.path.dirname(result.report_path)
        with open(os.path.join(run_dir, "config.json")) as f:
            self.assertEqual(json.load(f)["preset"], "i21k_to_i1k")


if __name__ == "__main__":
    tf.test.main()
