"""End to end at tiny scale: pretrain, finetune, export, push; caching;
retraining on new spans, pushed when blessed and not when not.

One test method walks the whole story, because each step builds on the
artifacts of the one before (as scheduled runs do).
"""

import os

import tensorflow as tf

from pipeline import config as config_lib
from pipeline import demo_data, runner
from pipeline import store as store_lib


def _tiny(root: str) -> config_lib.PipelineConfig:
    config = config_lib.demo_config()
    config = config_lib.apply(
        config,
        {
            "pipeline_root": root,
            "demo_fraction": 0.25,
            "data.validation_per_class": 8,
            # In-process Beam: no worker start-up per run at test scale.
            "data.beam_pipeline_args": ["--direct_running_mode=in_memory"],
            "finetune_data.validation_per_class": 8,
            "finetune_data.beam_pipeline_args": [
                "--direct_running_mode=in_memory"
            ],
            "pretrain.train_steps": 24,
            "pretrain.eval_every_steps": 0,
            "pretrain.runtime.checkpoint_every_steps": 12,
            "pretrain.batch_size": 16,
            "finetune.train_steps": 12,
            "finetune.eval_every_steps": 0,
            "finetune.batch_size": 16,
            "finetune.runtime.checkpoint_every_steps": 12,
            "exporter.warmup_batch_sizes": [1, 2],
            # Tiny models on a few hundred images are weak: bless anything
            # better than nothing, and the change threshold still applies.
            "evaluator.thresholds": [
                {"metric": "precision_at_1", "lower_bound": 0.0}
            ],
            "finetune_evaluator.thresholds": [
                {"metric": "top1", "lower_bound": 0.0},
                {
                    "metric": "top1",
                    "direction": "higher_is_better",
                    "absolute": -1.0,
                },
            ],
        },
    )
    return config


def _versions(serving: str, name: str) -> list[int]:
    path = os.path.join(serving, name)
    return sorted(int(v) for v in os.listdir(path) if v.isdigit())


class PipelinesTest(tf.test.TestCase):
    def test_pretrain_finetune_cache_and_retrain(self):
        root = self.create_tempdir().full_path
        config = _tiny(root)
        lines = []

        # 1. The main job: pretrain at 32 px, finetune at 64 px on five of
        # the ten classes, evaluate, export, push.
        first = runner.run_job("pretrain", config, progress=lines.append)
        self.assertEqual(first.exit_code, runner.EXIT_OK, "\n".join(lines))
        stages = [(r.stage, r.resolution) for r in first.rows]
        self.assertEqual(stages, [("pretrain", 32), ("finetune", 64)])
        serving = config.serving
        self.assertEqual(_versions(serving, config.model_name), [1])
        self.assertEqual(_versions(serving, config.pretrain_model_name), [1])
        version_dir = os.path.join(serving, config.model_name, "1")
        self.assertTrue(
            os.path.exists(os.path.join(version_dir, "saved_model.pb"))
        )
        finetuned = first.result.outputs["Trainer.finetune"]["model"]
        self.assertEqual(finetuned.properties.get("num_classes", 5), 5)
        report_dir = os.path.dirname(first.report_path)
        for png in (
            "pretrain_curves.png",
            "finetune_curves.png",
            "finetune_confusion.png",
            "bias_table_resize.png",
        ):
            self.assertTrue(os.path.exists(os.path.join(report_dir, png)), png)
        with open(first.report_path) as f:
            self.assertIn("finetune at 64 px", f.read())

        # 2. Nothing changed: every component is skipped.
        second = runner.run_job("pretrain", config, progress=lines.append)
        self.assertEqual(second.exit_code, runner.EXIT_OK)
        self.assertCountEqual(
            second.result.cached(), list(second.result.executions)
        )
        self.assertEqual(_versions(serving, config.model_name), [1])

        # 3. A new span, retrained and blessed: version 2 is pushed.
        data_root = os.path.join(root, "data")
        demo_data.write_span(data_root, 2, fraction=0.25)
        retrain = runner.run_job("retrain", config, progress=lines.append)
        self.assertEqual(retrain.exit_code, runner.EXIT_OK, "\n".join(lines))
        examples = retrain.result.outputs["ExampleGen.retrain"]["examples"]
        self.assertEqual(examples.properties["span"], 2)
        execution = retrain.result.executions["Trainer.retrain"]
        self.assertEqual(execution.inputs["base_model"].uri, finetuned.uri)
        self.assertIn(
            "baseline_model",
            retrain.result.executions["Evaluator.retrain"].inputs,
        )
        self.assertEqual(_versions(serving, config.model_name), [1, 2])

        # 4. Another span whose candidate fails the gate: nothing is
        # pushed and version 2 keeps serving.
        demo_data.write_span(data_root, 3, fraction=0.25)
        strict = config_lib.apply(
            config,
            {
                "finetune_evaluator.thresholds": [
                    {"metric": "top1", "lower_bound": 1.01}
                ]
            },
        )
        rejected = runner.run_job("retrain", strict, progress=lines.append)
        self.assertEqual(rejected.exit_code, runner.EXIT_NOT_BLESSED)
        self.assertEqual(_versions(serving, config.model_name), [1, 2])
        pushed = rejected.result.outputs["Pusher.retrain"]["pushed_model"]
        self.assertEqual(pushed.properties["pushed"], 0)

        # The ledger holds the lineage of the served model back to its data.
        store = store_lib.ArtifactStore(root)
        exported = retrain.result.outputs["Exporter.retrain"]["model"]
        chain = [e.component_id for e in store.lineage(exported.uri)]
        self.assertEqual(chain[0], "Exporter.retrain")
        for upstream in (
            "Evaluator.retrain",
            "Trainer.retrain",
            "ExampleGen.retrain",
            # The warm start links the lineage back to the first run.
            "Trainer.finetune",
            "Trainer.pretrain",
            "ExampleGen.pretrain",
        ):
            self.assertIn(upstream, chain)
        self.assertTrue(
            all(
                e.state in (store_lib.COMPLETE, store_lib.CACHED)
                for e in store.executions()
            )
        )

    def test_locked_root_exits_75(self):
        root = self.create_tempdir().full_path
        from pipeline import lock

        with lock.RunLock(root):
            result = runner.run_job(
                "retrain", _tiny(root), progress=lambda _: None
            )
        self.assertEqual(result.exit_code, runner.EXIT_LOCKED)


if __name__ == "__main__":
    tf.test.main()
