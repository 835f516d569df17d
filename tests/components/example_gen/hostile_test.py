"""End-to-end: a hostile corpus through the real pipeline, per source.

For each source (image folder, 21K tars, JFT manifests, TFDS) one run of
the real Beam pipeline reads every kind of bad input in
`hostile_corpus`, and the test asserts, kind by kind, the expected
outcome (written as is, converted, or rejected with a named reason),
the accounting (written + rejected == discovered + lost in damaged
archives), and that nothing was written outside the output or read from
outside the image root. The closing log line gives the kinds tried, the
crashes and the silent losses (both must be 0).
"""

import collections
import hashlib
import io
import logging
import os
import re
import shutil
import tarfile
import tempfile

import tensorflow as tf
from absl.testing import absltest

from components import base
from components.example_gen import component, images, records
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures, hostile_corpus

IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
_WORD = "A-Za-z0-9_"


def _tree(root: str, skip: str) -> dict[str, str]:
    """Every path under `root` (but `skip`) -> a digest of its content."""
    found = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            if os.path.abspath(path).startswith(skip):
                continue
            if os.path.islink(path) or not os.path.isfile(path):
                found[path] = "-"
            else:
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


class HostileCorpusTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        cls.tally = collections.Counter()

    @classmethod
    def tearDownClass(cls):
        logging.warning(
            "hostile corpus: %d kinds tried, %d crashes, %d silent losses",
            cls.tally["kinds"],
            cls.tally["crashes"],
            cls.tally["silent_losses"],
        )
        shutil.rmtree(cls.tmp)
        super().tearDownClass()

    def _run(self, name, source, fields, expected, by_id=None, **extra):
        root = os.path.join(self.tmp, name)
        uri = os.path.join(self.tmp, f"{name}_examples")
        before = _tree(self.tmp, uri)
        config = config_lib.ExampleGenConfig(
            source=source,
            num_shards=2,
            num_eval_shards=1,
            num_reject_shards=3,
            max_file_bytes=hostile_corpus.MAX_FILE_BYTES,
            beam_pipeline_args=IN_MEMORY,
            **fields,
            **extra,
        )
        self.tally["kinds"] += len(expected)
        try:
            base.execute(component.ExampleGen(), {}, {"examples": uri}, config)
        except Exception:
            self.tally["crashes"] += 1
            raise
        # Nothing outside the output was written, moved or removed.
        self.assertEqual(_tree(self.tmp, uri), before)
        self.assertTrue(os.path.isdir(root))
        metadata = base.read_json(os.path.join(uri, "metadata.json"))
        self.assertEqual(
            metadata["written"] + metadata["rejected"],
            metadata["discovered"] + metadata["lost_in_damaged_archives"],
        )
        got = self._outcomes(uri, metadata, expected, by_id or {})
        missing = sum(
            max(0, expected[k][o] - got[k][o])
            for k in expected
            for o in expected[k]
        )
        self.tally["silent_losses"] += missing
        for kind in expected:
            self.assertEqual(dict(got[kind]), dict(expected[kind]), kind)
        return metadata

    def _outcomes(self, uri, metadata, expected, by_id):
        """kind -> Counter of outcomes found in the output."""
        kinds = sorted(expected, key=len, reverse=True)
        patterns = {
            k: re.compile(rf"(?<![{_WORD}]){re.escape(k)}(?![{_WORD}])")
            for k in kinds
        }

        def kind_of(text):
            hits = {k for k in kinds if patterns[k].search(text)}
            self.assertLen(hits, 1, f"{text!r} names {hits}")
            return hits.pop()

        got = collections.defaultdict(collections.Counter)
        for split in metadata["splits"]:
            for shard in fixtures.read_shards(uri, split).values():
                for record in shard:
                    parsed = fixtures.parse(record)
                    source_id = parsed[records.SOURCE_ID][0].decode()
                    kind = kind_of(source_id)
                    data = parsed[records.IMAGE_ENCODED][0]
                    as_is = data in self.inputs
                    got[kind][
                        hostile_corpus.WRITTEN
                        if as_is
                        else hostile_corpus.CONVERTED
                    ] += 1
        for r in fixtures.read_rejects(uri):
            source = r["source"]
            tfds_id = source.rsplit("/", 1)[-1]
            if tfds_id in by_id:
                source = by_id[tfds_id]
            elif r["reason"] == records.DAMAGED_ARCHIVE and by_id:
                source = "tfds_cut_record"
            got[kind_of(source)][r["reason"]] += 1
        return got

    def _collect_inputs(self, root):
        """The bytes of every input file and member (to tell passthrough)."""
        self.inputs = set()
        for top, _, files in os.walk(os.fsencode(root)):
            for name in files:
                path = os.path.join(top, name)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        data = f.read()
                    self.inputs.add(data)
                    if name.endswith(b".tar"):
                        self._add_members(data)

    def _add_members(self, data):
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in tar:
                    if m.isfile():
                        f = tar.extractfile(m)
                        try:
                            self.inputs.add(f.read())
                        except tarfile.TarError:
                            pass
        except tarfile.TarError:
            pass

    def test_image_folder(self):
        root = os.path.join(self.tmp, "image_folder")
        fields, expected = hostile_corpus.image_folder(root)
        self._collect_inputs(root)
        metadata = self._run(
            "image_folder", config_lib.IMAGE_FOLDER, fields, expected
        )
        leaks = metadata["cross_split_duplicates"]
        self.assertEqual(leaks["count"], 1)
        self.assertEqual(
            sorted(
                (c["split"], os.path.basename(c["source"]))
                for c in leaks["listed"][0]["copies"]
            ),
            [("train", "if_leak_train.jpg"), ("validation", "if_leak_val.jpg")],
        )

    def test_imagenet21k(self):
        root = os.path.join(self.tmp, "imagenet21k")
        fields, expected = hostile_corpus.imagenet21k(root)
        self._collect_inputs(root)
        metadata = self._run(
            "imagenet21k",
            config_lib.IMAGENET21K,
            fields,
            expected,
            validation_per_class=0,
        )
        damaged = {
            os.path.basename(d["archive"]): d
            for d in metadata["damaged_archives"]
        }
        self.assertEqual(
            sorted(damaged),
            [
                "tar_bad_checksum.tar",
                "tar_cut_at_header.tar",
                "tar_cut_in_data.tar",
                "tar_empty_file.tar",
                "tar_junk.tar",
                "tar_no_end_blocks.tar",
                "tar_zeroed_header.tar",
            ],
        )
        self.assertEqual(metadata["lost_in_damaged_archives"], 7)
        self.assertEqual(damaged["tar_bad_checksum.tar"]["members_lost"], 3)
        self.assertEqual(damaged["tar_zeroed_header.tar"]["members_lost"], 3)
        self.assertIsNone(damaged["tar_cut_at_header.tar"]["members_lost"])
        self.assertIn("checksum", damaged["tar_bad_checksum.tar"]["problem"])
        # Nothing was extracted: no member escaped next to the tars.
        self.assertFalse(os.path.exists(os.path.join(root, "tar_dotdot.JPEG")))

    def test_jft(self):
        root = os.path.join(self.tmp, "jft")
        fields, expected = hostile_corpus.jft(root)
        self._collect_inputs(root)
        metadata = self._run("jft", config_lib.JFT, fields, expected)
        self.assertEqual(metadata["cross_split_duplicates"]["count"], 1)
        self.assertEqual(metadata["damaged_archives"], [])

    def test_tfds(self):
        root = os.path.join(self.tmp, "tfds")
        fields, expected, by_id = hostile_corpus.tfds_dataset(root)
        self._collect_inputs(root)
        for path in tf.io.gfile.glob(f"{fields['input']}/*.tfrecord-*"):
            try:
                for record in tf.compat.v1.io.tf_record_iterator(path):
                    example = tf.train.Example.FromString(record)
                    feature = example.features.feature["image"]
                    self.inputs.add(feature.bytes_list.value[0])
            except tf.errors.DataLossError:
                pass  # The cut record file: its first records are in.
        metadata = self._run(
            "tfds", config_lib.TFDS, fields, expected, by_id=by_id
        )
        (damage,) = metadata["damaged_archives"]
        self.assertEqual(damage["members_lost"], 1)
        self.assertGreaterEqual(
            metadata["rejects"]["by_reason"][images.FORMAT_NOT_ALLOWED], 1
        )

    def test_ordered_labels_file_is_checked_by_count(self):
        root = os.path.join(self.tmp, "ordered")
        for i in range(3):
            fixtures.write(f"{root}/train/n01/t{i}.JPEG", fixtures.good_jpeg(i))
        for i in (0, 2):  # v1 is missing: v2 would take v1's label.
            fixtures.write(f"{root}/val/v{i}.JPEG", fixtures.good_jpeg(9 + i))
        labels = fixtures.write(f"{root}/labels.txt", b"n01\nn01\nn01\n")
        config = config_lib.ExampleGenConfig(
            source=config_lib.IMAGE_FOLDER,
            input=f"{root}/train",
            validation_input=f"{root}/val",
            validation_labels=labels,
            beam_pipeline_args=IN_MEMORY,
        )
        uri = os.path.join(self.tmp, "ordered_examples")
        with self.assertRaisesRegex(
            ValueError, "lists 3 classes in file order.*holds 2 files"
        ):
            base.execute(component.ExampleGen(), {}, {"examples": uri}, config)


if __name__ == "__main__":
    absltest.main()
