"""The quiet console keeps the project's log lines and the libraries'
warnings, and drops the libraries' INFO chatter."""

import logging
import os

from absl.testing import absltest

from pipeline import console
from tests import source_tree

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _record(path: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("absl", level, path, 1, "message", None, None)


class ProjectRecordsTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.keep = console.ProjectRecords(_ROOT).filter

    def test_project_lines_pass(self):
        for module in (
            "components/trainer/train_lib.py",
            "pipeline/dag.py",
            "coatnet_tf/model.py",
        ):
            self.assertTrue(self.keep(_record(os.path.join(_ROOT, module))))

    def test_library_info_is_dropped_and_warnings_pass(self):
        site = "/venv/lib/python3.11/site-packages"
        for path in (
            f"{site}/tensorflow/python/checkpoint/functional_saver.py",
            f"{site}/apache_beam/runners/portability/local_job_service.py",
            # A directory named like ours but outside the project.
            f"{site}/tensorflow/pipeline/dag.py",
        ):
            self.assertFalse(self.keep(_record(path)), path)
            self.assertTrue(self.keep(_record(path, logging.WARNING)), path)

    def test_installed_project_under_site_packages(self):
        site = "/venv/lib/python3.11/site-packages"
        keep = console.ProjectRecords(site).filter
        self.assertTrue(keep(_record(f"{site}/pipeline/runner.py")))
        self.assertFalse(keep(_record(f"{site}/tensorflow/__init__.py")))


class ProjectPackagesTest(absltest.TestCase):
    def test_every_top_level_package_is_listed(self):
        # A package missing from the list would have its INFO lines
        # dropped as a library's.
        root = source_tree.root()
        found = {
            name
            for name in os.listdir(root)
            if name != "tests"
            and os.path.isfile(os.path.join(root, name, "__init__.py"))
        }
        self.assertEqual(set(console.PROJECT_PACKAGES), found)


if __name__ == "__main__":
    absltest.main()
