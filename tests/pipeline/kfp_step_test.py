"""The compiled steps' command line: inputs, resolvers over the ledger,
recording in the ledger, and errors that name the flag."""

import json
import os

from absl.testing import absltest

from components import base
from components.pusher.component import Pusher, PusherConfig
from components.trainer.component import Trainer
from pipeline import kfp_step, lock, pipelines
from pipeline import store as store_lib


class KfpStepTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path

    def test_input_errors_name_the_flag(self):
        with self.assertRaisesRegex(ValueError, r"--input=bogus=.*Trainer"):
            kfp_step.resolve_inputs(Trainer.SPEC, {"bogus": "x"}, {}, "")
        missing = os.path.join(self.root, "nothing")
        with self.assertRaisesRegex(
            ValueError, f"--input=examples={missing}: .*_artifact.json"
        ):
            kfp_step.resolve_inputs(Trainer.SPEC, {"examples": missing}, {}, "")
        spec = json.dumps(pipelines.latest_model("finetune").spec)
        with self.assertRaisesRegex(ValueError, "--resolve needs"):
            kfp_step.resolve_inputs(Trainer.SPEC, {}, {"base_model": spec}, "")
        with self.assertRaisesRegex(ValueError, "--resolve=base_model"):
            kfp_step.resolve_inputs(
                Trainer.SPEC, {}, {"base_model": '{"resolver": "x"}'}, self.root
            )

    def test_reads_inputs_and_resolves_over_the_ledger(self):
        examples = base.Artifact(
            base.EXAMPLES, os.path.join(self.root, "ex"), {"span": 3}
        )
        examples.write()
        # The retrain Trainer's base model resolver.
        spec = json.dumps(
            pipelines.first_of(
                pipelines.latest_blessed_model("retrain", "finetune"),
                pipelines.latest_model("finetune"),
            ).spec
        )
        # An empty ledger: the resolver finds nothing, the input is left out.
        inputs = kfp_step.resolve_inputs(
            Trainer.SPEC,
            {"examples": examples.uri},
            {"base_model": spec},
            self.root,
        )
        self.assertEqual(set(inputs), {"examples"})
        self.assertEqual(inputs["examples"].properties, {"span": 3})
        # A finetuned model recorded by an earlier run is found.
        model = base.Artifact(base.MODEL, os.path.join(self.root, "m"))
        store = store_lib.ArtifactStore(self.root)
        execution = store.start(
            run_id="r1",
            pipeline="finetune",
            component_id="Trainer.finetune",
            cache_key="k",
            inputs={},
            config={},
        )
        store.finish(execution, store_lib.COMPLETE, {"model": model})
        inputs = kfp_step.resolve_inputs(
            Trainer.SPEC,
            {"examples": examples.uri},
            {"base_model": spec},
            self.root,
        )
        self.assertEqual(inputs["base_model"].uri, model.uri)

    def test_record_appends_what_resolvers_read(self):
        model = base.Artifact(base.MODEL, os.path.join(self.root, "export"))
        blessing = base.Artifact(base.MODEL_BLESSING, "b", {"blessed": 1})
        pushed = base.Artifact(
            base.PUSHED_MODEL, "p", {"pushed": 1, "model_name": "coatnet"}
        )
        kfp_step.record(
            self.root,
            run_id="coatnet-demo-retrain-20261201",
            pipeline="retrain",
            node_id="Pusher.retrain",
            component=Pusher(),
            inputs={"model": model, "blessing": blessing},
            config=PusherConfig(model_name="coatnet"),
            outputs={"pushed_model": pushed},
            lock_seconds=0,
        )
        (execution,) = store_lib.ArtifactStore(self.root).executions()
        self.assertEqual(execution.state, store_lib.COMPLETE)
        self.assertEqual(execution.run_id, "coatnet-demo-retrain-20261201")
        self.assertLen(execution.cache_key, 64)
        found = pipelines.pushed_model("coatnet")(
            store_lib.ArtifactStore(self.root)
        )
        self.assertEqual(found.uri, model.uri)

    def test_record_waits_for_the_lock_then_fails(self):
        with lock.RunLock(self.root):
            with self.assertRaises(lock.LockHeldError):
                kfp_step.record(
                    self.root,
                    run_id="r",
                    pipeline="retrain",
                    node_id="Pusher.retrain",
                    component=Pusher(),
                    inputs={},
                    config=PusherConfig(),
                    outputs={},
                    lock_seconds=0,
                )
        self.assertEqual(store_lib.ArtifactStore(self.root).executions(), [])


if __name__ == "__main__":
    absltest.main()
