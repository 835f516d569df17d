"""End-to-end: ImageNet-21K per-synset tars, resized, GZIP shards."""

import os
import shutil
import tempfile

import tensorflow as tf
from absl.testing import absltest
from official.vision.dataloaders import classification_input

from components import base
from components.example_gen import component, images, records, sources
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures

IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
PER_CLASS = 8


class ImageNet21kPipelineTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        tars = os.path.join(cls.tmp, "winter21")
        cls.members = {}
        for s, synset in enumerate(("n00000001", "n00000002", "n00000009")):
            members = [
                (f"{synset}_{i}.JPEG", fixtures.good_jpeg(20 * s + i, 48, 72))
                for i in range(PER_CLASS)
            ]
            cls.members[synset] = [name for name, _ in members]
            extra, links = [], []
            if s == 0:
                extra = [
                    ("../x.JPEG", fixtures.good_jpeg(90)),
                    ("/abs/y.JPEG", fixtures.good_jpeg(91)),
                    (f"{synset}_cmyk.JPEG", fixtures.cmyk_jpeg(92)),
                ]
                links = [("link.JPEG", f"{synset}_0.JPEG")]
                cls.members[synset].append(f"{synset}_cmyk.JPEG")
            fixtures.write_tar(f"{tars}/{synset}.tar", members + extra, links)
        # n00000003 is listed but has no tar; n00000009 has a tar but is not
        # listed.
        synsets = fixtures.write(
            f"{cls.tmp}/synsets.txt", b"n00000001\nn00000002\nn00000003\n"
        )
        words = fixtures.write(
            f"{cls.tmp}/words.txt", b"n00000001\tentity\nn00000002\tthing\n"
        )
        cls.tars = tars
        cls.uri = os.path.join(cls.tmp, "examples")
        config = config_lib.ExampleGenConfig(
            source=config_lib.IMAGENET21K,
            input=tars,
            synsets=synsets,
            class_descriptions=words,
            validation_per_class=2,
            resize_shorter_side=32,
            compression=config_lib.GZIP,
            num_shards=2,
            num_eval_shards=1,
            beam_pipeline_args=IN_MEMORY,
        )
        base.execute(component.ExampleGen(), {}, {"examples": cls.uri}, config)
        cls.metadata = base.read_json(os.path.join(cls.uri, "metadata.json"))
        cls.train = fixtures.read_shards(cls.uri, "train")
        cls.validation = fixtures.read_shards(cls.uri, "validation")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)
        super().tearDownClass()

    def _parsed(self, shards):
        return [fixtures.parse(r) for s in shards.values() for r in s]

    def test_gzip_layout_and_label_map(self):
        self.assertEqual(
            sorted(self.train),
            [
                "data_tfrecord-00000-of-00002.gz",
                "data_tfrecord-00001-of-00002.gz",
            ],
        )
        self.assertEqual(
            list(self.validation), ["data_tfrecord-00000-of-00001.gz"]
        )
        self.assertEqual(self.metadata["compression"], "GZIP")
        self.assertEqual(self.metadata["file_format"], "tfrecords_gzip")
        self.assertEqual(
            self.metadata["label_map"][:2],
            [
                {
                    "index": 0,
                    "name": "n00000001",
                    "synset": "n00000001",
                    "description": "entity",
                },
                {
                    "index": 1,
                    "name": "n00000002",
                    "synset": "n00000002",
                    "description": "thing",
                },
            ],
        )
        self.assertEqual(self.metadata["notes"]["ignored_tars"], ["n00000009"])

    def test_every_member_written_or_rejected(self):
        m = self.metadata
        written = self._parsed(self.train) + self._parsed(self.validation)
        ids = sorted(p[records.SOURCE_ID][0].decode() for p in written)
        want = sorted(
            f"{synset}/{name}"
            for synset in ("n00000001", "n00000002")
            for name in self.members[synset]
        )
        self.assertEqual(ids, want)
        self.assertEqual(m["written"] + m["rejected"], m["discovered"])
        self.assertEqual(m["rejected"], 4)
        self.assertEqual(
            m["rejects"]["by_reason"],
            {
                records.UNSAFE_PATH: 2,
                records.NOT_A_FILE: 1,
                records.EMPTY_CLASS: 1,
            },
        )
        self.assertEqual(m["conversions"][images.FROM_CMYK], 1)

    def test_unsafe_member_paths_are_rejected(self):
        rejects = fixtures.read_rejects(self.uri)
        tar = f"{self.tars}/n00000001.tar"
        unsafe = sorted(
            r["source"] for r in rejects if r["reason"] == records.UNSAFE_PATH
        )
        self.assertEqual(unsafe, [f"{tar}:../x.JPEG", f"{tar}:/abs/y.JPEG"])
        # Nothing was extracted next to the tars or above them.
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "x.JPEG")))
        self.assertEqual(
            sorted(os.listdir(self.tars)),
            ["n00000001.tar", "n00000002.tar", "n00000009.tar"],
        )

    def test_validation_is_held_out_by_file_name_hash(self):
        val = self._parsed(self.validation)
        got = sorted(p[records.SOURCE_ID][0].decode() for p in val)
        want = sorted(
            f"{synset}/{name}"
            for synset in ("n00000001", "n00000002")
            for name in sources.holdout(self.members[synset], 2, 0.0)
        )
        self.assertEqual(got, want)

    def test_resized_and_decodable_by_model_garden(self):
        decoder = classification_input.Decoder()
        for record in [r for s in self.train.values() for r in s]:
            decoded = decoder.decode(tf.constant(record))
            image = tf.io.decode_jpeg(decoded["image/encoded"])
            self.assertEqual(min(image.shape[:2]), 32)
            self.assertIn(int(decoded["image/class/label"]), (0, 1))


if __name__ == "__main__":
    absltest.main()
