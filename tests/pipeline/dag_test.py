"""Tests for the DAG runner, the artifact store's ledger and the run lock."""

import dataclasses
import json
import os
import subprocess
import sys

import tensorflow as tf

from components import base
from pipeline import dag, lock
from pipeline import store as store_lib

_CALLS = []


@dataclasses.dataclass(frozen=True)
class _GenConfig:
    text: str = "abc"


@dataclasses.dataclass(frozen=True)
class _TrainConfig:
    repeat: int = 2
    fail_first: bool = False


class _Gen(base.Component):
    SPEC = base.ComponentSpec(
        name="Gen",
        inputs={},
        outputs={"examples": base.EXAMPLES},
        config_type=_GenConfig,
    )

    def run(self, inputs, outputs, config):
        _CALLS.append("Gen")
        path = os.path.join(outputs["examples"].uri, "data.txt")
        with open(path, "w") as f:
            f.write(config.text)
        outputs["examples"].properties["span"] = len(config.text)


class _Train(base.Component):
    SPEC = base.ComponentSpec(
        name="Train",
        inputs={"examples": base.EXAMPLES, "base_model": base.MODEL},
        outputs={"model": base.MODEL},
        config_type=_TrainConfig,
        optional_inputs=frozenset({"base_model"}),
    )

    def run(self, inputs, outputs, config):
        _CALLS.append("Train")
        progress = os.path.join(outputs["model"].uri, "progress")
        # Resumable: a marker left by an earlier attempt in the same dir.
        resumed = os.path.exists(progress)
        with open(progress, "w") as f:
            f.write("started")
        if config.fail_first and not resumed:
            raise RuntimeError("preempted")
        with open(os.path.join(inputs["examples"].uri, "data.txt")) as f:
            text = f.read()
        outputs["model"].properties["weights"] = text * config.repeat
        outputs["model"].properties["resumed"] = resumed


def _nodes(text="abc", repeat=2, fail_first=False, base_model=None):
    train_inputs = {"examples": dag.OutputRef("Gen", "examples")}
    if base_model is not None:
        train_inputs["base_model"] = base_model
    return [
        dag.Node("Gen", _Gen(), _GenConfig(text)),
        dag.Node(
            "Train", _Train(), _TrainConfig(repeat, fail_first), train_inputs
        ),
    ]


class DagTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        _CALLS.clear()
        self.root = self.create_tempdir().full_path
        self.store = store_lib.ArtifactStore(self.root)
        self.lines = []

    def _run(self, nodes, **kw):
        return dag.run("p", nodes, self.store, progress=self.lines.append, **kw)

    def test_runs_in_order_with_tfx_layout_and_lineage(self):
        result = self._run(_nodes())
        self.assertEqual(_CALLS, ["Gen", "Train"])
        model = result.outputs["Train"]["model"]
        self.assertEqual(model.properties["weights"], "abcabc")
        self.assertEqual(model.uri, os.path.join(self.root, "Train/model/2"))
        examples = result.outputs["Gen"]["examples"]
        self.assertEqual(
            examples.uri, os.path.join(self.root, "Gen/examples/1")
        )
        chain = self.store.lineage(model.uri)
        self.assertEqual([e.component_id for e in chain], ["Train", "Gen"])
        ledger = json.load(open(os.path.join(self.root, "ledger.json")))
        self.assertEqual(
            [e["state"] for e in ledger["executions"]], ["COMPLETE"] * 2
        )

    def test_second_run_is_fully_cached(self):
        first = self._run(_nodes())
        second = self._run(_nodes())
        self.assertEqual(_CALLS, ["Gen", "Train"])
        self.assertEqual(second.cached(), ["Gen", "Train"])
        self.assertEqual(
            second.outputs["Train"]["model"].uri,
            first.outputs["Train"]["model"].uri,
        )
        self.assertIn("cached", self.lines[-1])

    def test_config_change_reruns_only_downstream(self):
        self._run(_nodes(repeat=2))
        result = self._run(_nodes(repeat=3))
        self.assertEqual(_CALLS, ["Gen", "Train", "Train"])
        self.assertEqual(result.cached(), ["Gen"])
        self.assertIn("changed: config", self.lines[-2])
        self.assertEqual(
            result.outputs["Train"]["model"].properties["weights"], "abc" * 3
        )

    def test_upstream_change_invalidates_downstream(self):
        self._run(_nodes(text="abc"))
        result = self._run(_nodes(text="xyz"))
        self.assertEqual(result.cached(), [])

    def test_cache_disabled(self):
        self._run(_nodes())
        self._run(_nodes(), enable_cache=False)
        self.assertEqual(_CALLS, ["Gen", "Train"] * 2)

    def test_deleted_outputs_are_not_reused(self):
        first = self._run(_nodes())
        tf.io.gfile.rmtree(first.outputs["Train"]["model"].uri)
        second = self._run(_nodes())
        self.assertEqual(second.cached(), ["Gen"])

    def test_failed_execution_resumes_in_place(self):
        with self.assertRaisesRegex(RuntimeError, "preempted"):
            self._run(_nodes(fail_first=True))
        failed = self.store.executions()[-1]
        self.assertEqual(failed.state, store_lib.FAILED)
        self.assertIn("preempted", failed.error)
        result = self._run(_nodes(fail_first=True))
        model = result.outputs["Train"]["model"]
        self.assertTrue(model.properties["resumed"])
        self.assertEqual(result.executions["Train"].id, failed.id)
        self.assertEqual(result.cached(), ["Gen"])

    def test_own_commit_the_ledger_never_saw_is_redone_not_refused(self):
        class _StrictGen(_Gen):
            def check_rewrite(self, uri, config):
                raise ValueError(f"{uri} is complete: refused")

        nodes = [dag.Node("Gen", _StrictGen(), _GenConfig("abc"))]
        first = self._run(nodes)
        uri = first.outputs["Gen"]["examples"].uri
        # Killed after writing _artifact.json, before the ledger's COMPLETE.
        execution = self.store.executions()[-1]
        self.store.finish(execution, store_lib.RUNNING)
        with self.assertRaisesRegex(ValueError, "refused"):
            base.execute(_StrictGen(), {}, {"examples": uri}, _GenConfig())
        result = self._run(nodes)
        self.assertEqual(_CALLS, ["Gen", "Gen"])
        self.assertEqual(result.executions["Gen"].id, execution.id)
        self.assertEqual(result.outputs["Gen"]["examples"].uri, uri)
        self.assertTrue(base.is_complete(uri))
        self.assertIn("resuming", self.lines[-2])

    def test_resolver_input_and_artifact_query(self):
        first = self._run(_nodes())
        model = first.outputs["Train"]["model"]

        def latest_model(store):
            found = store.artifacts(base.MODEL)
            return found[-1] if found else None

        result = self._run(_nodes(repeat=4, base_model=latest_model))
        inputs = result.executions["Train"].inputs
        self.assertEqual(inputs["base_model"].uri, model.uri)
        warm = result.outputs["Train"]["model"]

        # Re-running with nothing new: the resolver input stays pinned to
        # what it resolved to (not the newer `warm` model), so the run is
        # fully cached.
        again = self._run(_nodes(repeat=4, base_model=latest_model))
        self.assertEqual(again.cached(), ["Gen", "Train"])
        self.assertEqual(
            again.executions["Train"].inputs["base_model"].uri, model.uri
        )
        # New upstream data: the resolver runs afresh and finds `warm`.
        fresh = self._run(_nodes("xyz", repeat=4, base_model=latest_model))
        self.assertEqual(
            fresh.executions["Train"].inputs["base_model"].uri, warm.uri
        )

    def test_order_is_checked(self):
        nodes = list(reversed(_nodes()))
        with self.assertRaisesRegex(ValueError, "does not run before"):
            self._run(nodes)

    def test_code_change_changes_cache_key(self):
        node = _nodes()[0]
        key = dag.cache_key(node, {}, {"text": "abc"})
        self.assertEqual(key, dag.cache_key(node, {}, {"text": "abc"}))
        self.assertNotEqual(key, dag.cache_key(node, {}, {"text": "abd"}))
        with_pkg = dataclasses.replace(node, code_packages=("pipeline",))
        self.assertNotEqual(
            dag.code_fingerprint(node), dag.code_fingerprint(with_pkg)
        )


class LockTest(tf.test.TestCase):
    def test_second_holder_is_refused(self):
        root = self.create_tempdir().full_path
        with lock.RunLock(root):
            with self.assertRaisesRegex(lock.LockHeldError, "Another run"):
                with lock.RunLock(root):
                    pass
        with lock.RunLock(root):  # Released: can be taken again.
            pass

    def test_stale_lock_of_dead_process_is_taken_over(self):
        root = self.create_tempdir().full_path
        # A child process takes the lock and dies without releasing it.
        code = (
            "import os, sys; sys.path.insert(0, sys.argv[2]);"
            "from pipeline import lock;"
            "lock.RunLock(sys.argv[1]).__enter__(); os._exit(0)"
        )
        repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        subprocess.run([sys.executable, "-c", code, root, repo], check=True)
        self.assertTrue(os.path.exists(os.path.join(root, lock.LOCK_FILE)))
        with lock.RunLock(root):
            pass


if __name__ == "__main__":
    tf.test.main()
