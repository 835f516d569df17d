"""Tests for the ExampleGen CLI: flags, pass-through, early errors, a run."""

import json
import os
import subprocess
import sys
from unittest import mock

from absl import app
from absl.testing import absltest, flagsaver

from components.example_gen import main, runners
from tests import child_env
from tests.components.example_gen import fixtures

# tests/components/example_gen/main_test.py -> the repository root.
_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 3))


def _parse(*args):
    """Parses flags as the binary does; returns the pass-through args."""
    main.FLAGS.unparse_flags()
    return main._parse_flags(["example_gen", *args])[1:]


class CliTest(absltest.TestCase):
    @flagsaver.flagsaver
    def test_flags_paths_and_passthrough(self):
        cwd = self.create_tempdir().full_path
        rest = _parse(
            "--source=jft",
            "--input=manifests/{SPAN}/train.jsonl",
            "--labels_vocab=vocab.txt",
            "--output=/tmp/x",
            "--num_shards=7",
            "--compression=GZIP",
            "--project=my-project",
            "--temp_location=gs://bucket/tmp",
            "--beam_pipeline_args=--max_num_workers=5 --region us-central1",
        )
        with mock.patch.dict(os.environ, {"BUILD_WORKING_DIRECTORY": cwd}):
            config = main.build_config(rest)
        self.assertEqual(config.input, f"{cwd}/manifests/{{SPAN}}/train.jsonl")
        self.assertEqual(config.labels_vocab, f"{cwd}/vocab.txt")
        self.assertEqual((config.num_shards, config.compression), (7, "GZIP"))
        self.assertEqual(
            config.beam_pipeline_args,
            (
                "--max_num_workers=5",
                "--region",
                "us-central1",
                "--project=my-project",
                "--temp_location=gs://bucket/tmp",
            ),
        )
        runner, args = runners.make_runner(
            config.__class__(**{**config.__dict__, "runner": "DataflowRunner"})
        )
        self.assertEqual(runner, "DataflowRunner")
        self.assertIn("--runner=DataflowRunner", args)

    @flagsaver.flagsaver
    def test_tfds_names_are_not_paths(self):
        rest = _parse(
            "--source=tfds", "--input=imagenet2012:5.1.0", "--output=/o"
        )
        self.assertEqual(main.build_config(rest).input, "imagenet2012:5.1.0")

    @flagsaver.flagsaver
    def test_default_runner_is_one_process_per_core(self):
        rest = _parse("--source=tfds", "--input=x", "--output=/o")
        runner, args = runners.make_runner(main.build_config(rest))
        self.assertEqual(type(runner).__name__, "FnApiRunner")
        self.assertEqual(
            args,
            [
                "--direct_running_mode=multi_processing",
                f"--direct_num_workers={os.cpu_count()}",
            ],
        )

    @flagsaver.flagsaver
    def test_local_worker_count_and_mode_can_be_set(self):
        rest = _parse(
            "--source=tfds",
            "--input=x",
            "--output=/o",
            "--num_workers=3",
            "--direct_running_mode=multi_threading",
        )
        runner, args = runners.make_runner(main.build_config(rest))
        self.assertEqual(type(runner).__name__, "FnApiRunner")
        # The user's running mode wins over the default one.
        self.assertEqual(
            args,
            ["--direct_num_workers=3", "--direct_running_mode=multi_threading"],
        )

    @flagsaver.flagsaver
    def test_misspelt_flag_and_runner_in_passthrough_fail(self):
        rest = _parse(
            "--source=image_folder",
            "--input=/x",
            "--output=/o",
            "--num_shard=3",
        )
        with self.assertRaisesRegex(app.UsageError, r"--num_shard"):
            main.main(["example_gen", *rest])
        rest = _parse(
            "--source=image_folder",
            "--input=/x",
            "--output=/o",
            "--beam_pipeline_args=--runner=FlinkRunner",
        )
        with self.assertRaisesRegex(
            app.UsageError, "Pass the runner as --runner"
        ):
            main.main(["example_gen", *rest])

    @flagsaver.flagsaver
    def test_missing_input_fails_before_the_pipeline(self):
        tmp = self.create_tempdir().full_path
        missing = os.path.join(tmp, "no_such_dir")
        rest = _parse(
            "--source=image_folder", f"--input={missing}", f"--output={tmp}/out"
        )
        with mock.patch.object(runners, "run") as run:
            with self.assertRaisesRegex(app.UsageError, f"--input={missing}"):
                main.main(["example_gen", *rest])
            run.assert_not_called()
        pattern = os.path.join(tmp, "none-*.jsonl")
        vocab = fixtures.write(os.path.join(tmp, "vocab.txt"), b"a\n")
        rest = _parse(
            "--source=jft",
            f"--input={pattern}",
            f"--labels_vocab={vocab}",
            f"--output={tmp}/out2",
        )
        with mock.patch.object(runners, "run") as run:
            with self.assertRaisesRegex(app.UsageError, "matches no file"):
                main.main(["example_gen", *rest])
            run.assert_not_called()

    def test_binary_runs_end_to_end(self):
        tmp = self.create_tempdir().full_path
        for c, cls in enumerate(("a", "b")):
            for i in range(3):
                data = fixtures.good_jpeg(10 * c + i)
                fixtures.write(f"{tmp}/train/{cls}/{i}.jpg", data)
        env = child_env.python_env(BUILD_WORKING_DIRECTORY=tmp)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "components.example_gen.main",
                "--source=image_folder",
                "--input=train",  # Relative to the calling directory.
                "--output=out",
                "--num_shards=2",
                "--num_eval_shards=1",
                "--validation_per_class=1",
                "--direct_running_mode=in_memory",  # A pass-through option.
            ],
            cwd=_REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        printed = json.loads(proc.stdout[proc.stdout.index("{") :])
        self.assertEqual(printed["uri"], f"{tmp}/out")
        self.assertEqual(
            printed["properties"]["num_examples"], {"train": 4, "validation": 2}
        )
        with open(f"{tmp}/out/metadata.json") as f:
            options = json.load(f)["options"]
        self.assertIn(
            "--direct_running_mode=in_memory", options["beam_pipeline_args"]
        )


if __name__ == "__main__":
    absltest.main()
