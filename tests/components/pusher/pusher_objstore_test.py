"""The Pusher on an object store (the GCS emulator on loopback), killed.

A child process pushes a real SavedModel to gs://<bucket>/serving and is
SIGKILLed mid-upload (objects in the staging prefix) or mid-publish
(objects in the version directory, no marker). Neither leaves a version a
server loads or the Pusher counts as pushed; the next push completes a
version that loads and serves, and leaves no staging objects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import tensorflow as tf
from absl.testing import absltest

from artifacts import blessing as blessing_lib
from artifacts import model as model_io
from artifacts import publish
from components import base
from components.pusher import component as pusher
from storage import objstore
from tests import child_env
from tests.storage import emulator

# Many small warmup-style files make the push long enough to kill inside.
_EXTRA_FILES = 150

_CHILD = """
import sys
from components import base
from components.pusher import component as pusher
model, blessed, out, serving = sys.argv[1:]
base.execute(
    pusher.Pusher(),
    {
        "model": base.Artifact.read(model),
        "blessing": base.Artifact.read(blessed),
    },
    {"pushed_model": out},
    pusher.PusherConfig(serving_base=serving),
)
"""


class _Tiny(tf.Module):
    def __init__(self, value):
        super().__init__()
        self.w = tf.Variable(value)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        return {"y": x * self.w}


class PusherObjectStoreTest(emulator.EmulatorMixin, absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        self.serving = self.gcs.uri(self.id().rsplit(".", 1)[-1], "serving")
        self.model_dir = f"{self.serving}/coatnet"
        self.model = self._model()
        self.blessed = os.path.join(self.root, "blessing")
        os.makedirs(self.blessed)
        artifact = base.Artifact(base.MODEL_BLESSING, self.blessed)
        blessing_lib.write(artifact, True)
        # The Pusher checks the blessing judged this very model.
        artifact.properties["current_model"] = self.model
        artifact.write()

    def _model(self) -> str:
        uri = os.path.join(self.root, "model")
        export = os.path.join(uri, model_io.SERVING_DIR)
        module = _Tiny(3.0)
        tf.saved_model.save(
            module, export, signatures={"serving_default": module.__call__}
        )
        extra = os.path.join(export, "assets.extra")
        os.makedirs(extra)
        for i in range(_EXTRA_FILES):
            with open(os.path.join(extra, f"warmup-{i:03d}"), "wb") as f:
                f.write(os.urandom(2048))
        base.Artifact(base.MODEL, uri, {"exported": 1}).write()
        return uri

    def _push_killed_when(self, ready) -> list[str]:
        out = os.path.join(self.root, f"killed-{time.monotonic_ns()}")
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD]
            + [self.model, self.blessed, out, self.serving],
            env=child_env.python_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            files = objstore.list_tree(self.model_dir)
            if ready(files):
                child.send_signal(signal.SIGKILL)
                child.wait()
                return files
            if child.poll() is not None:
                self.fail(
                    "The push ended before the kill:\n"
                    + child.stdout.read().decode(errors="replace")[-3000:]
                )
            time.sleep(0.005)
        child.kill()
        self.fail("The push never reached the kill point.")

    def _push(self) -> dict:
        out = os.path.join(self.root, f"pushed-{time.monotonic_ns()}")
        outputs = base.execute(
            pusher.Pusher(),
            {
                "model": base.Artifact.read(self.model),
                "blessing": base.Artifact.read(self.blessed),
            },
            {"pushed_model": out},
            pusher.PusherConfig(serving_base=self.serving),
        )
        return outputs["pushed_model"].properties

    def _check_complete_version(self, version: int) -> None:
        files = objstore.list_tree(self.model_dir)
        source = objstore.list_tree(
            os.path.join(self.model, model_io.SERVING_DIR)
        )
        want = sorted(
            [f"{version}/{p}" for p in source]
            + [f"{version}/{publish.PUSHED_MARKER}"]
        )
        self.assertEqual(files, want)  # No staging objects either.
        local = os.path.join(self.root, f"downloaded-{version}")
        objstore.copy_tree(f"{self.model_dir}/{version}", local)
        loaded = tf.saved_model.load(local)
        y = loaded.signatures["serving_default"](tf.constant([2.0]))["y"]
        self.assertEqual(float(y[0]), 6.0)

    def test_killed_while_staging_then_pushed(self):
        files = self._push_killed_when(
            lambda files: sum(".staging-" in f for f in files) >= 20
        )
        self.assertFalse(any(f.endswith(publish.PUSHED_MARKER) for f in files))
        self.assertEqual(publish.list_versions(self.model_dir), [])
        props = self._push()
        self.assertEqual(props["pushed_version"], "1")
        self.assertIn("Pushed version 1", props["reason"])
        self._check_complete_version(1)
        self.assertIn("Already", self._push()["reason"])

    def test_killed_while_publishing_is_not_counted_as_pushed(self):
        files = self._push_killed_when(
            lambda files: sum(f.startswith("1/") for f in files) >= 20
        )
        self.assertNotIn(f"1/{publish.PUSHED_MARKER}", files)
        self.assertNotIn("1/saved_model.pb", files)
        self.assertEqual(publish.list_versions(self.model_dir), [1])
        self.assertFalse(publish.is_pushed(f"{self.model_dir}/1"))
        # The partial version is replaced, not taken for already pushed.
        props = self._push()
        self.assertEqual(props["pushed_version"], "1")
        self.assertIn("Pushed version 1", props["reason"])
        self._check_complete_version(1)
        self.assertIn("Already", self._push()["reason"])


if __name__ == "__main__":
    absltest.main()
