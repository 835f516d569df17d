"""The run ledger survives kill -9 mid-write and a damaged ledger.json."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import tensorflow as tf

from components import base
from pipeline import store as store_lib
from storage import objstore
from tests import child_env
from tests.storage import emulator

# Records executions as fast as it can until killed.
_RECORDER = """
import sys
from pipeline import store as store_lib
store = store_lib.ArtifactStore(sys.argv[1])
n = 0
while True:
    n += 1
    store.start(
        run_id="r", pipeline="p", component_id=f"C.{n}",
        cache_key="k" * 64, inputs={}, config={"pad": "x" * 2000},
    )
    if n == 5:
        print("RECORDING", flush=True)
"""


def _record(store: store_lib.ArtifactStore, name: str):
    return store.start(
        run_id="r",
        pipeline="p",
        component_id=name,
        cache_key=name,
        inputs={},
        config={},
    )


def _kill_while_recording(test, root: str, rounds: int) -> None:
    """SIGKILLs a process recording executions into `root`, `rounds` times;
    after each kill the ledger reads back whole and has grown."""
    seen = 0
    for _ in range(rounds):
        child = subprocess.Popen(
            [sys.executable, "-c", _RECORDER, root],
            env=child_env.python_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        test.assertEqual(child.stdout.readline().strip(), "RECORDING")
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        ids = [e.id for e in store_lib.ArtifactStore(root).executions()]
        # Every recorded id is there, none twice, none skipped.
        test.assertEqual(ids, list(range(1, len(ids) + 1)))
        test.assertGreater(len(ids), seen)
        seen = len(ids)


class LedgerTest(tf.test.TestCase):
    def test_sigkill_while_recording_leaves_a_readable_ledger(self):
        _kill_while_recording(self, self.create_tempdir().full_path, 3)

    def test_truncated_ledger_falls_back_to_previous_copy(self):
        root = self.create_tempdir().full_path
        store = store_lib.ArtifactStore(root)
        _record(store, "A")
        _record(store, "B")
        path = os.path.join(root, store_lib.LEDGER_FILE)
        with open(path, "rb") as f:
            whole = f.read()
        with open(path, "wb") as f:
            f.write(whole[: len(whole) // 2])
        with self.assertLogs(level="WARNING") as logs:
            names = [e.component_id for e in store.executions()]
        self.assertEqual(names, ["A"])
        self.assertIn("ledger.json.prev", logs.output[0])
        # Work goes on from the recovered ledger.
        _record(store, "C")
        names = [e.component_id for e in store.executions()]
        self.assertEqual(names, ["A", "C"])

    def test_empty_ledger_without_previous_copy_is_named(self):
        root = self.create_tempdir().full_path
        path = os.path.join(root, store_lib.LEDGER_FILE)
        with open(path, "wb"):
            pass
        store = store_lib.ArtifactStore(root)
        with self.assertRaisesRegex(
            objstore.CorruptFileError, "ledger.json is empty"
        ):
            store.executions()


class LedgerOnObjectStoreTest(emulator.EmulatorMixin, tf.test.TestCase):
    """The artifact store with its root on gs:// (the emulator)."""

    def test_cache_hits_need_committed_outputs_on_gs(self):
        root = self.gcs.uri("caching", "root")
        store = store_lib.ArtifactStore(root)
        execution = _record(store, "Trainer.pretrain")
        uri = store.output_uri("Trainer.pretrain", "model", execution.id)
        self.assertStartsWith(uri, root)
        # Output data without its commit marker: not complete, no hit.
        objstore.write_atomic(f"{uri}/weights/model.index", b"w")
        model = base.Artifact(base.MODEL, uri, {"step": 4})
        store.finish(execution, store_lib.COMPLETE, outputs={"model": model})
        self.assertIsNone(store.find_complete("Trainer.pretrain"))
        model.write()
        found = store_lib.ArtifactStore(root).find_complete("Trainer.pretrain")
        self.assertEqual(found.id, execution.id)
        self.assertEqual(found.outputs["model"].properties, {"step": 4})
        self.assertEqual(base.Artifact.read(uri).properties, {"step": 4})
        # Retracted before a rewrite: no longer a hit.
        self.assertTrue(base.retract(uri))
        self.assertIsNone(store.find_complete("Trainer.pretrain"))

    def test_sigkill_while_recording_on_gs_leaves_a_readable_ledger(self):
        # The child reaches the emulator through STORAGE_EMULATOR_HOST.
        _kill_while_recording(self, self.gcs.uri("killed", "root"), 2)

    def test_truncated_ledger_on_gs_falls_back_to_previous_copy(self):
        root = self.gcs.uri("truncated", "root")
        store = store_lib.ArtifactStore(root)
        _record(store, "A")
        _record(store, "B")
        path = f"{root}/{store_lib.LEDGER_FILE}"
        whole = objstore.read(path).data
        objstore.write_atomic(path, whole[: len(whole) // 2])
        with self.assertLogs(level="WARNING"):
            names = [e.component_id for e in store.executions()]
        self.assertEqual(names, ["A"])


if __name__ == "__main__":
    tf.test.main()
