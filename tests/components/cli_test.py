"""Tests for components/cli.py: path resolution under `bazel run`."""

import os
from unittest import mock

import tensorflow as tf

from components import base, cli


class CliTest(tf.test.TestCase):
    def test_relative_path_uses_build_working_directory(self):
        with mock.patch.dict(os.environ, {"BUILD_WORKING_DIRECTORY": "/u/me"}):
            self.assertEqual(cli.resolve_user_path("out/a"), "/u/me/out/a")

    def test_absolute_and_uri_unchanged(self):
        with mock.patch.dict(os.environ, {"BUILD_WORKING_DIRECTORY": "/u/me"}):
            self.assertEqual(cli.resolve_user_path("/abs"), "/abs")
            self.assertEqual(cli.resolve_user_path("gs://b/x"), "gs://b/x")

    def test_without_bazel_uses_cwd(self):
        env = dict(os.environ)
        env.pop("BUILD_WORKING_DIRECTORY", None)
        with mock.patch.dict(os.environ, env, clear=True):
            self.assertEqual(
                cli.resolve_user_path("rel"),
                os.path.join(os.getcwd(), "rel"),
            )

    def test_refuses_source_tree_and_runfiles(self):
        src = self.create_tempdir("src").full_path
        runfiles = self.create_tempdir("runfiles").full_path
        env = {"BUILD_WORKSPACE_DIRECTORY": src, "RUNFILES_DIR": runfiles}
        with mock.patch.dict(os.environ, env):
            with self.assertRaisesRegex(ValueError, "--output=.*source tree"):
                cli.check_output_location(os.path.join(src, "o"), "output")
            with self.assertRaisesRegex(ValueError, "runfiles"):
                cli.check_output_location(runfiles, "output")
            ok = self.create_tempdir("elsewhere").full_path
            self.assertEqual(cli.check_output_location(ok, "output"), ok)

    def test_default_home(self):
        with mock.patch.dict(os.environ, {"COATNET_HOME": "/data/runs"}):
            self.assertEqual(cli.default_home(), "/data/runs")

    def test_read_input_artifact_names_flag(self):
        with self.assertRaisesRegex(ValueError, "--examples is required"):
            cli.read_input_artifact("", base.EXAMPLES, "examples")
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, "--examples: .*not an"):
            cli.read_input_artifact(empty, base.EXAMPLES, "examples")


if __name__ == "__main__":
    tf.test.main()
