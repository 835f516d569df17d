"""Tests for storage/objstore.py on local disk and on a GCS emulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from absl.testing import absltest

from storage import objstore
from tests import child_env
from tests.storage import emulator

# Rewrites a JSON state file as fast as it can, growing it each time, until
# killed: the content always says how long it should be.
_WRITER = """
import sys
from storage import objstore
path, n = sys.argv[1], 0
while True:
    n += 1
    objstore.write_json(path, {"n": n, "pad": "x" * (n % 5000)})
    if n == 20:
        print("WRITING", flush=True)
"""

# Creates and deletes one file in a loop until killed.
_CREATOR = """
import os, sys
from storage import objstore
path = sys.argv[1]
while True:
    version = objstore.create(path, b"owner-token-" * 200)
    if version is not None:
        objstore.delete(path, version)
"""


class _ObjstoreCases:
    """The same cases for each filesystem; subclasses give `path`."""

    def path(self, name: str) -> str:
        raise NotImplementedError

    def test_trees_copy_last_files_last_list_and_delete(self):
        src = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, src)
        for name, data in (("a", b"1"), ("sub/b", b"22"), ("last", b"3")):
            os.makedirs(
                os.path.dirname(os.path.join(src, name)) or src, exist_ok=True
            )
            with open(os.path.join(src, name), "wb") as f:
                f.write(data)
        tree = self.path("tree")
        order = objstore.copy_tree(src, tree, last=("last",))
        self.assertEqual(order, ["a", "sub/b", "last"])
        self.assertEqual(objstore.list_tree(tree), ["a", "last", "sub/b"])
        self.assertEqual(objstore.list_children(tree), ["a", "last", "sub"])
        back = os.path.join(src, "back")
        objstore.copy_tree(tree, back)
        with open(os.path.join(back, "sub", "b"), "rb") as f:
            self.assertEqual(f.read(), b"22")
        self.assertTrue(objstore.remove(f"{tree}/a"))
        self.assertFalse(objstore.remove(f"{tree}/a"))
        self.assertEqual(objstore.delete_tree(tree), 2)
        self.assertEqual(objstore.list_tree(tree), [])

    def test_read_missing_is_none(self):
        self.assertIsNone(objstore.read(self.path("missing")))
        self.assertFalse(objstore.exists(self.path("missing")))

    def test_create_only_if_absent(self):
        path = self.path("f")
        version = objstore.create(path, b"one")
        self.assertIsNotNone(version)
        self.assertIsNone(objstore.create(path, b"two"))
        current = objstore.read(path)
        self.assertEqual(current.data, b"one")
        self.assertEqual(current.version, version)

    def test_racing_creates_have_one_winner(self):
        path = self.path("race")
        barrier = threading.Barrier(6)
        wins = []

        def create(i):
            barrier.wait()
            if objstore.create(path, f"{i}".encode()) is not None:
                wins.append(i)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertLen(wins, 1)
        self.assertEqual(objstore.read(path).data, f"{wins[0]}".encode())

    def test_replace_is_compare_and_swap(self):
        path = self.path("cas")
        v1 = objstore.create(path, b"one")
        v2 = objstore.replace(path, b"two", v1)
        self.assertNotEqual(v1, v2)
        with self.assertRaises(objstore.PreconditionFailed):
            objstore.replace(path, b"three", v1)
        self.assertEqual(objstore.read(path).data, b"two")
        self.assertEqual(objstore.read(path).version, v2)

    def test_replace_of_missing_file_fails(self):
        path = self.path("gone")
        version = objstore.create(path, b"x")
        self.assertTrue(objstore.delete(path, version))
        with self.assertRaises(objstore.PreconditionFailed):
            objstore.replace(path, b"y", version)
        self.assertIsNone(objstore.read(path))

    def test_delete_only_at_version(self):
        path = self.path("del")
        v1 = objstore.create(path, b"one")
        v2 = objstore.replace(path, b"two", v1)
        self.assertFalse(objstore.delete(path, v1))
        self.assertEqual(objstore.read(path).data, b"two")
        self.assertTrue(objstore.delete(path, v2))
        self.assertIsNone(objstore.read(path))
        self.assertFalse(objstore.delete(path, v2))

    def test_concurrent_increments_lose_no_update(self):
        path = self.path("counter")
        objstore.create(path, b"0")

        def bump(times):
            for _ in range(times):
                while True:
                    current = objstore.read(path)
                    value = int(current.data) + 1
                    try:
                        objstore.replace(
                            path, str(value).encode(), current.version
                        )
                        break
                    except objstore.PreconditionFailed:
                        continue

        threads = [threading.Thread(target=bump, args=(8,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(objstore.read(path).data, b"32")

    def test_json_round_trip_keeps_previous(self):
        path = self.path("state.json")
        objstore.write_json(path, {"n": 1})
        objstore.write_json(path, {"n": 2})
        self.assertEqual(objstore.read_json(path), {"n": 2})
        self.assertEqual(
            json.loads(objstore.read(path + objstore.PREV_SUFFIX).data),
            {"n": 1},
        )

    def test_truncated_json_recovers_previous_copy(self):
        path = self.path("ledger.json")
        objstore.write_json(path, {"n": 1})
        objstore.write_json(path, {"n": 2})
        for damage in (b"", b"   \n", b'{"n": 2, "exec', b"\xff\xfe"):
            objstore.write_atomic(path, damage)
            with self.assertLogs(level="WARNING") as logs:
                self.assertEqual(objstore.read_json(path), {"n": 1})
            self.assertIn(path + objstore.PREV_SUFFIX, logs.output[0])
        # The next write keeps the good previous copy, not the damage.
        objstore.write_json(path, {"n": 3})
        self.assertEqual(objstore.read_json(path), {"n": 3})
        self.assertEqual(
            json.loads(objstore.read(path + objstore.PREV_SUFFIX).data),
            {"n": 1},
        )

    def test_unrecoverable_json_names_the_files(self):
        path = self.path("bad.json")
        objstore.write_atomic(path, b'{"n": ')
        with self.assertRaisesRegex(
            objstore.CorruptFileError, "bad.json is not valid JSON.*No prev"
        ):
            objstore.read_json(path)
        objstore.write_atomic(path + objstore.PREV_SUFFIX, b"")
        with self.assertRaisesRegex(
            objstore.CorruptFileError, r"bad.json.prev is empty"
        ):
            objstore.read_json(path)
        with self.assertRaises(FileNotFoundError):
            objstore.read_json(self.path("absent.json"))

    def _sigkill_writer(self, path: str, rounds: int) -> None:
        """Kills a rewriting process at varied moments; the file must
        always hold one complete document."""
        for i in range(rounds):
            child = subprocess.Popen(
                [sys.executable, "-c", _WRITER, path],
                env=child_env.python_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
            self.assertEqual(child.stdout.readline().strip(), "WRITING")
            time.sleep(0.01 * (i % 7))
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            value = objstore.read_json(path)
            self.assertEqual(value["pad"], "x" * (value["n"] % 5000))
            self.assertGreaterEqual(value["n"], 20)
            objstore.write_atomic(path, b"")  # Next round starts damaged.


class LocalObjstoreTest(_ObjstoreCases, absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def test_write_leaves_no_temp_files(self):
        path = self.path("sub/dir/state.json")
        objstore.write_json(path, {"a": 1})
        objstore.write_json(path, {"a": 2})
        self.assertCountEqual(
            os.listdir(os.path.dirname(path)),
            ["state.json", "state.json.prev"],
        )

    def test_sigkill_during_rewrites_leaves_a_whole_file(self):
        self._sigkill_writer(self.path("state.json"), rounds=8)

    def test_created_file_never_seen_without_content(self):
        path = self.path("lock")
        child = subprocess.Popen(
            [sys.executable, "-c", _CREATOR, path],
            env=child_env.python_env(),
        )
        try:
            seen, deadline = 0, time.monotonic() + 20
            while seen < 300 and time.monotonic() < deadline:
                current = objstore.read(path)
                if current is not None:
                    seen += 1
                    self.assertEqual(current.data, b"owner-token-" * 200)
            self.assertGreater(seen, 0)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()


class GcsObjstoreTest(
    emulator.EmulatorMixin, _ObjstoreCases, absltest.TestCase
):
    def setUp(self):
        super().setUp()
        self.prefix = f"t{time.monotonic_ns()}"

    def path(self, name: str) -> str:
        return self.gcs.uri(self.prefix, name)

    def test_sigkill_during_uploads_leaves_a_whole_object(self):
        self._sigkill_writer(self.path("state.json"), rounds=4)

    def test_bad_uri_is_named(self):
        with self.assertRaisesRegex(ValueError, "gs://only-bucket"):
            objstore.read("gs://only-bucket")


class TensorFlowGcsClientTest(unittest.TestCase):
    def test_tf_gcs_endpoint_is_fixed(self):
        """Why gs:// state goes through google-cloud-storage: TensorFlow's
        GCS filesystem has its endpoint compiled in (no variable names an
        emulator), so an emulator cannot stand in for it in tests."""
        import tensorflow as tf

        lib = os.path.join(
            os.path.dirname(tf.__file__), "libtensorflow_framework.so.2"
        )
        with open(lib, "rb") as f:
            blob = f.read()
        self.assertIn(b"https://www.googleapis.com/storage/v1/", blob)
        self.assertNotIn(b"STORAGE_EMULATOR_HOST", blob)


if __name__ == "__main__":
    absltest.main()
