"""The demo DAG end to end through KFP's own local runner (kfp.local with
its SubprocessRunner, no Docker), at tiny scale on CPU.

The pretrain job with its finetune stage: ten steps, each executing the
step command line the compiled container would run. The pretraining
Evaluator cannot bless (its bound is above 1), so its Pusher is skipped by
the blessing gate; the finetuning Evaluator blesses anything, so its
Pusher pushes. The ledger under the pipeline root records what ran.
"""

import dataclasses
import os

import tensorflow as tf
from absl.testing import absltest

from components.evaluator import blessing as blessing_lib
from pipeline import config as config_lib
from pipeline import kfp_local, runner
from pipeline import store as store_lib
from tests import child_env


def _tiny(root: str) -> config_lib.PipelineConfig:
    in_memory = ["--direct_running_mode=in_memory"]
    config = config_lib.apply(
        config_lib.demo_config(),
        {
            "pipeline_root": root,
            "demo_fraction": 0.1,
            "data.validation_per_class": 4,
            "data.beam_pipeline_args": in_memory,
            "finetune_data.validation_per_class": 4,
            "finetune_data.beam_pipeline_args": in_memory,
            "pretrain.train_steps": 4,
            "pretrain.eval_every_steps": 0,
            "pretrain.batch_size": 8,
            "pretrain.runtime.checkpoint_every_steps": 4,
            "finetune.train_steps": 4,
            "finetune.eval_every_steps": 0,
            "finetune.batch_size": 8,
            "finetune.runtime.checkpoint_every_steps": 4,
            "exporter.warmup_batch_sizes": [1],
        },
    )
    never = blessing_lib.thresholds_from_json(
        [{"metric": "top1", "lower_bound": 1.01}]
    )
    always = blessing_lib.thresholds_from_json(
        [{"metric": "top1", "lower_bound": 0.0}]
    )
    return dataclasses.replace(
        config,
        evaluator=dataclasses.replace(config.evaluator, thresholds=never),
        finetune_evaluator=dataclasses.replace(
            config.finetune_evaluator, thresholds=always
        ),
    )


class KfpLocalTest(absltest.TestCase):
    def test_demo_dag_runs_under_kfp_local(self):
        # kfp.local starts each step as `python -m kfp.dsl.executor_main`
        # with this process's environment: give it the test's imports.
        os.environ.update(child_env.python_env())
        root = self.create_tempdir().full_path
        config = runner.prepare_data(_tiny(root))
        nodes = runner.build_nodes("pretrain", config)
        self.assertLen(nodes, 10)
        kfp_local.run_local(
            "pretrain", nodes, config, os.path.join(root, "kfp")
        )

        executions = store_lib.ArtifactStore(root).executions()
        by_node = {e.component_id: e for e in executions}
        ran = {n.id for n in nodes} - {"Pusher.pretrain"}
        self.assertEqual(set(by_node), ran)
        for execution in executions:
            self.assertEqual(execution.state, store_lib.COMPLETE)
            self.assertEqual(execution.pipeline, "pretrain")
            self.assertStartsWith(execution.run_id, "coatnet-demo-pretrain-")
        # The edges: each step read what its producer wrote under KFP's
        # root, as the DAG says.
        for node in nodes:
            if node.id not in by_node:
                continue
            for key, source in node.inputs.items():
                if callable(source):
                    continue
                produced = by_node[source.node_id].outputs[source.key]
                self.assertEqual(
                    by_node[node.id].inputs[key].uri,
                    produced.uri,
                    f"{node.id}.{key}",
                )
                self.assertStartsWith(
                    produced.uri, os.path.join(root, "kfp") + os.sep
                )
        blessing = by_node["Evaluator.pretrain"].outputs["blessing"]
        self.assertEqual(blessing.properties["blessed"], 0)
        blessing = by_node["Evaluator.finetune"].outputs["blessing"]
        self.assertEqual(blessing.properties["blessed"], 1)
        pushed = by_node["Pusher.finetune"].outputs["pushed_model"]
        self.assertEqual(pushed.properties["pushed"], 1)
        version_dir = pushed.properties["pushed_destination"]
        self.assertTrue(
            tf.io.gfile.exists(os.path.join(version_dir, "saved_model.pb")),
            version_dir,
        )
        self.assertFalse(
            tf.io.gfile.exists(os.path.join(config.serving, "coatnet_pretrain"))
        )


if __name__ == "__main__":
    absltest.main()
