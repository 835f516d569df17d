"""tools/docker/Dockerfile agrees with the lock file and the compiler.

No Docker daemon runs where the tests do, so the image is not built here;
these checks catch the drift a build would only show on a cloud worker.
"""

import os
import re

from absl.testing import absltest

from pipeline import kfp_compile

_ROOT = os.path.abspath(
    os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..")
)


def _read(*parts: str) -> str:
    with open(os.path.join(_ROOT, *parts)) as f:
        return f.read()


class ContainerImageTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.dockerfile = _read("tools", "docker", "Dockerfile")
        self.lock = _read("requirements_lock.txt")

    def test_installs_the_lock_with_hashes(self):
        self.assertRegex(
            self.dockerfile,
            r"pip install --require-hashes --no-deps -r requirements_lock.txt",
        )
        self.assertIn("FROM python:3.11-slim", self.dockerfile)
        self.assertIn("--python-version 3.11", _read("tools", "lock.sh"))

    def test_beam_worker_matches_the_locked_beam(self):
        (locked,) = re.findall(r"^apache-beam==(\S+) ", self.lock, re.M)
        (image,) = re.findall(r"beam_python3\.11_sdk:(\S+) ", self.dockerfile)
        self.assertEqual(image, locked)

    def test_copies_every_package_the_steps_import(self):
        module = kfp_compile.STEP_COMMAND[-1]
        self.assertEqual(module, "pipeline.kfp_step")
        for package in ("coatnet_tf", "components", "configs", "pipeline"):
            self.assertIn(f"COPY {package} {package}", self.dockerfile)
        self.assertIn("ENV PYTHONPATH=/app", self.dockerfile)
        # Kubeflow and Vertex set the command; an entrypoint would wrap it.
        final = self.dockerfile.rsplit("FROM ", 1)[1]
        self.assertNotIn("ENTRYPOINT", final)


if __name__ == "__main__":
    absltest.main()
