"""The accounting check: a run that loses an entry must fail loudly."""

import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest

from components import base
from components.example_gen import beam_pipeline, component, records, sources
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures

IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def _stats(
    discovered, written, rejected, shards_written=2, units=1, damaged=()
):
    return {
        "discovered": discovered,
        "written": written,
        "rejected": rejected,
        "lost_in_damaged_archives": len(damaged),
        "damaged_archives": [{"archive": a} for a in damaged],
        "rejects": {
            "by_reason": {records.DAMAGED_ARCHIVE: len(damaged)}
            if damaged
            else {},
            "shards_written": 1,
        },
        "units": units,
        "splits": {"train": {"shards_written": shards_written}},
    }


class CheckAccountingTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        uri = self.create_tempdir().full_path
        self.layout = beam_pipeline.Layout(uri, (("train", 2),), "NONE")
        for shard in range(2):
            fixtures.write(self.layout.shard_path("train", shard), b"")
        self.plan = sources.Plan(classes=[], splits=("train",), units=[{}])

    def test_balanced_run_passes(self):
        component.check_accounting(_stats(5, 3, 2), self.plan, self.layout)

    def test_lost_or_invented_entries_raise(self):
        with self.assertRaisesRegex(
            component.AccountingError,
            r"written 3 \+ rejected 1 != discovered 5",
        ):
            component.check_accounting(_stats(5, 3, 1), self.plan, self.layout)
        with self.assertRaisesRegex(component.AccountingError, "0 of 1 units"):
            component.check_accounting(
                _stats(5, 3, 2, units=0), self.plan, self.layout
            )

    def test_damaged_archives_count_as_lost_not_discovered(self):
        # 3 written + 1 rejected member + 1 damaged_archive reject for the
        # unread rest: 4 discovered, 1 lost.
        stats = _stats(4, 3, 2, damaged=("a.tar",))
        component.check_accounting(stats, self.plan, self.layout)
        stats["damaged_archives"] = []
        with self.assertRaisesRegex(
            component.AccountingError, "0 damaged archives listed"
        ):
            component.check_accounting(stats, self.plan, self.layout)
        with self.assertRaisesRegex(
            component.AccountingError,
            r"written 3 \+ rejected 2 != discovered 4 \+ lost in damaged "
            r"archives 0",
        ):
            component.check_accounting(_stats(4, 3, 2), self.plan, self.layout)

    def test_a_missing_reject_file_raises(self):
        stats = _stats(5, 3, 2)
        stats["rejects"]["shards_written"] = 0
        with self.assertRaisesRegex(
            component.AccountingError, "0 of 1 reject files"
        ):
            component.check_accounting(stats, self.plan, self.layout)

    def test_missing_or_extra_shard_files_raise(self):
        os.remove(self.layout.shard_path("train", 1))
        with self.assertRaisesRegex(component.AccountingError, "misses"):
            component.check_accounting(_stats(5, 3, 2), self.plan, self.layout)
        fixtures.write(self.layout.shard_path("train", 1), b"")
        with self.assertRaisesRegex(component.AccountingError, "twice"):
            component.check_accounting(
                _stats(5, 3, 2, shards_written=3), self.plan, self.layout
            )


class LostEntryTest(absltest.TestCase):
    def test_a_stage_that_drops_an_image_fails_the_run(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        for i in range(4):
            fixtures.write(f"{tmp}/train/c/{i}.jpg", fixtures.good_jpeg(i))
        process = beam_pipeline.ConvertFn.process

        def lossy(self, entry):
            if entry[1].get("source_id") == "c/2.jpg":
                return iter(())  # A bug: the image vanishes silently.
            return process(self, entry)

        config = config_lib.ExampleGenConfig(
            source=config_lib.IMAGE_FOLDER,
            input=f"{tmp}/train",
            validation_per_class=0,
            num_shards=1,
            beam_pipeline_args=IN_MEMORY,
        )
        with mock.patch.object(beam_pipeline.ConvertFn, "process", lossy):
            with self.assertRaisesRegex(
                component.AccountingError,
                r"written 3 \+ rejected 0 != discovered 4",
            ):
                base.execute(
                    component.ExampleGen(),
                    {},
                    {"examples": f"{tmp}/out"},
                    config,
                )
        # No metadata or artifact record is left claiming success.
        self.assertFalse(os.path.exists(f"{tmp}/out/metadata.json"))
        self.assertFalse(os.path.exists(f"{tmp}/out/{base.ARTIFACT_FILE}"))


class RedactionTest(absltest.TestCase):
    def test_secret_beam_options_are_masked(self):
        args = (
            "--s3_secret_access_key=SECRET-1",
            "--s3_access_key_id",
            "SECRET-2",
            "--flink_master=http://user:SECRET-3@flink:8081",
            "--s3_session_token=SECRET-4",
            "--direct_num_workers=1",
        )
        redacted = config_lib.redact_args(args)
        self.assertNotIn("SECRET", " ".join(redacted))
        self.assertEqual(
            redacted,
            (
                "--s3_secret_access_key=<redacted>",
                "--s3_access_key_id",
                "<redacted>",
                "--flink_master=http://user:<redacted>@flink:8081",
                "--s3_session_token=<redacted>",
                "--direct_num_workers=1",
            ),
        )

    def test_nothing_logged_or_recorded_holds_a_secret(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        fixtures.write(f"{tmp}/train/c/0.jpg", fixtures.good_jpeg(0))
        config = config_lib.ExampleGenConfig(
            source=config_lib.IMAGE_FOLDER,
            input=f"{tmp}/train",
            validation_per_class=0,
            num_shards=1,
            beam_pipeline_args=IN_MEMORY
            + (
                "--s3_secret_access_key=SECRET-5",
                "--s3_session_token=SECRET-6",
            ),
        )
        with self.assertLogs(level="INFO") as logs:
            base.execute(
                component.ExampleGen(), {}, {"examples": f"{tmp}/out"}, config
            )
        self.assertTrue(any("Running ExampleGen" in m for m in logs.output))
        self.assertFalse([m for m in logs.output if "SECRET" in m])
        for top, _, files in os.walk(f"{tmp}/out"):
            for name in files:
                with open(os.path.join(top, name), "rb") as f:
                    self.assertNotIn(b"SECRET", f.read(), name)
        metadata = base.read_json(f"{tmp}/out/metadata.json")
        self.assertIn(
            "--s3_secret_access_key=<redacted>",
            metadata["options"]["beam_pipeline_args"],
        )


if __name__ == "__main__":
    absltest.main()
