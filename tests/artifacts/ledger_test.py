"""Ledger records are typed, and the resolvers read them through types."""

import json
import os

from absl.testing import absltest

from artifacts import blessing, core, model_store
from pipeline import pipelines
from pipeline import store as store_lib


class LedgerTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        self.store = store_lib.ArtifactStore(self.root)

    def _run(self, component_id, inputs, outputs, config=None):
        execution = self.store.start(
            run_id="r",
            pipeline="p",
            component_id=component_id,
            cache_key=f"{component_id}-{len(self.store.executions())}",
            inputs=inputs,
            config=config or {},
        )
        for artifact in outputs.values():
            os.makedirs(artifact.uri, exist_ok=True)
            artifact.write()
        return self.store.finish(execution, store_lib.COMPLETE, outputs)

    def _model(self, name):
        return core.Artifact(core.MODEL, os.path.join(self.root, name))

    def _push(self, model, model_name, pushed=True):
        artifact = core.Artifact(
            core.PUSHED_MODEL,
            os.path.join(self.root, f"push-{model_name}-{len(model.uri)}"),
        )
        model_store.PushedModel(
            pushed, model_name, 1 if pushed else None, "", "test"
        ).record(artifact)
        self._run(
            "Pusher.x",
            {"model": model},
            {"pushed_model": artifact},
            # The config says nothing of the model name: the record does.
            config={},
        )

    def test_executions_read_back_as_typed_artifacts(self):
        model = self._model("m1")
        self._run("Trainer.x", {}, {"model": model})
        (execution,) = self.store.executions()
        self.assertIsInstance(execution.outputs["model"], core.Artifact)
        self.assertEqual(execution.outputs["model"].uri, model.uri)
        self.assertTrue(execution.finished_ok)
        with open(os.path.join(self.root, store_lib.LEDGER_FILE)) as f:
            data = json.load(f)
        self.assertEqual(
            data["executions"][0]["outputs"]["model"]["type_name"], core.MODEL
        )

    def test_an_unknown_ledger_field_is_named(self):
        with self.assertRaisesRegex(core.ArtifactError, r"\['surprise'\]"):
            store_lib.Execution.from_json(
                {
                    "id": 1,
                    "run_id": "r",
                    "pipeline": "p",
                    "component_id": "c",
                    "cache_key": "k",
                    "state": "COMPLETE",
                    "surprise": 1,
                }
            )

    def test_pushed_model_tells_model_names_apart(self):
        first, second = self._model("m1"), self._model("model-two")
        self._push(first, "pets")
        self._push(second, "cars")
        self._push(self._model("m3"), "pets", pushed=False)
        self.assertEqual(
            pipelines.pushed_model("pets")(self.store).uri, first.uri
        )
        self.assertEqual(
            pipelines.pushed_model("cars")(self.store).uri, second.uri
        )
        self.assertIsNone(pipelines.pushed_model("birds")(self.store))

    def test_latest_blessed_model_reads_the_blessing(self):
        models = [self._model(f"m{i}") for i in range(3)]
        for i, model in enumerate(models):
            verdict = core.Artifact(
                core.MODEL_BLESSING, os.path.join(self.root, f"b{i}")
            )
            verdict.properties[blessing.BLESSED_PROPERTY] = int(i != 2)
            self._run("Evaluator.s", {"model": model}, {"blessing": verdict})
        found = pipelines.latest_blessed_model("s")(self.store)
        self.assertEqual(found.uri, models[1].uri)


if __name__ == "__main__":
    absltest.main()
