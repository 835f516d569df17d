"""End-to-end: class folders through the default runner, bad inputs included.

One run on the default runner (FnApiRunner, 2 worker processes) with a
guard that fails any non-local connection and any use of Prism; two more
in-process runs check determinism and the seed.
"""

import os
import shutil
import socket
import tempfile
from unittest import mock

import tensorflow as tf
from absl.testing import absltest, parameterized
from apache_beam.runners.portability import prism_runner
from official.vision.dataloaders import classification_input

from components import base
from components.example_gen import component, images, records
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures

GOOD_PER_CLASS = fixtures.GOOD_PER_CLASS
IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def _config(root: str, **kwargs) -> config_lib.ExampleGenConfig:
    return config_lib.ExampleGenConfig(
        source=config_lib.IMAGE_FOLDER,
        input=f"{root}/train",
        validation_input=f"{root}/val",
        validation_labels=f"{root}/val_labels.csv",
        num_shards=3,
        num_eval_shards=2,
        max_pixels=1_000_000,
        **kwargs,
    )


class _NetworkGuard:
    """Records (and refuses) connections that leave the machine."""

    def __init__(self):
        self.attempts = []
        self._connect = socket.socket.connect

    def connect(self, sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1",
            "::1",
            "localhost",
            "0.0.0.0",
        ):
            self.attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return self._connect(sock, address)


class ImageFolderPipelineTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        cls.root = os.path.join(cls.tmp, "data")
        fixtures.make_image_folder(cls.root)
        guard = _NetworkGuard()
        cls.prism_calls = []
        with (
            mock.patch.object(
                socket.socket,
                "connect",
                autospec=True,
                side_effect=guard.connect,
            ),
            mock.patch.object(
                prism_runner.PrismRunner,
                "run_pipeline",
                side_effect=lambda *a, **k: cls.prism_calls.append(a),
            ),
        ):
            cls.uri = os.path.join(cls.tmp, "examples")
            cls.artifact = base.execute(
                component.ExampleGen(),
                {},
                {"examples": cls.uri},
                _config(cls.root, num_workers=2),
            )["examples"]
        cls.network_attempts = guard.attempts
        cls.metadata = base.read_json(os.path.join(cls.uri, "metadata.json"))
        cls.rejects = fixtures.read_rejects(cls.uri)
        cls.train = fixtures.read_shards(cls.uri, "train")
        cls.validation = fixtures.read_shards(cls.uri, "validation")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)
        super().tearDownClass()

    def _records(self):
        return [r for shard in self.train.values() for r in shard] + [
            r for shard in self.validation.values() for r in shard
        ]

    def _source_ids(self, split_shards):
        return sorted(
            fixtures.parse(r)[records.SOURCE_ID][0].decode()
            for shard in split_shards.values()
            for r in shard
        )

    def test_default_runner_never_downloads(self):
        self.assertEqual(self.network_attempts, [])
        self.assertEqual(self.prism_calls, [])
        self.assertEqual(self.metadata["runner"], "FnApiRunner")

    def test_layout_and_properties(self):
        self.assertEqual(
            sorted(self.train),
            [f"data_tfrecord-{i:05d}-of-00003" for i in range(3)],
        )
        self.assertEqual(
            sorted(self.validation),
            [f"data_tfrecord-{i:05d}-of-00002" for i in range(2)],
        )
        with open(os.path.join(self.uri, "labels.txt")) as f:
            self.assertEqual(f.read(), "n01\nn02\nn03\n")
        props = base.Artifact.read(self.uri, base.EXAMPLES).properties
        self.assertEqual(props["split_names"], ["train", "validation"])
        self.assertEqual(props["span"], 0)
        self.assertEqual(props["num_classes"], 3)
        self.assertFalse(props["multi_label"])
        self.assertEqual(props["compression"], "NONE")
        self.assertEqual(props["num_examples"], {"train": 13, "validation": 4})
        self.assertEqual(props["fingerprint"], self.metadata["fingerprint"])
        self.assertEqual(props, self.artifact.properties)
        self.assertEqual(
            self.metadata["label_map"][0], {"index": 0, "name": "n01"}
        )
        self.assertEqual(
            self.metadata["splits"]["train"]["per_class"], {"n01": 5, "n02": 8}
        )
        self.assertFalse(tf.io.gfile.exists(os.path.join(self.uri, "_work")))

    def test_every_good_image_is_written(self):
        good = [f"n01/n01_{i}.JPEG" for i in range(GOOD_PER_CLASS)]
        good += [f"n02/n02_{i}.JPEG" for i in range(GOOD_PER_CLASS)]
        good += ["n02/alpha.png", "n02/cmyk.jpg", "n02/gray.jpg"]
        good.remove("n02/n02_1.JPEG")  # "n02/copy.JPEG" is kept instead.
        good.append("n02/copy.JPEG")
        self.assertEqual(self._source_ids(self.train), sorted(good))
        self.assertEqual(
            self._source_ids(self.validation), [f"v{i}.JPEG" for i in range(4)]
        )

    def test_accounting(self):
        m = self.metadata
        self.assertEqual(m["written"] + m["rejected"], m["discovered"])
        self.assertEqual(
            (m["written"], m["rejected"], m["discovered"]), (17, 7, 24)
        )
        self.assertLen(self.rejects, m["rejected"])
        self.assertLen(self._records(), m["written"])
        self.assertEqual(m["beam_metrics"]["discovered"], 24)
        self.assertEqual(m["beam_metrics"]["written"], 17)
        self.assertEqual(m["beam_metrics"]["rejected"], 7)

    @parameterized.named_parameters(
        ("corrupt_jpeg", "n01/corrupt.jpg", images.DECODE_ERROR),
        ("truncated_jpeg", "n01/truncated.jpg", images.TRUNCATED),
        ("non_image_file", "n01/notes.txt", images.NOT_AN_IMAGE),
        ("zero_byte_file", "n01/zero.jpg", images.EMPTY_FILE),
        ("huge_image", "n01/bomb.png", images.TOO_MANY_PIXELS),
        ("empty_class_folder", "n03", records.EMPTY_CLASS),
        ("duplicate_file", "n02/n02_1.JPEG", records.DUPLICATE),
    )
    def test_bad_input_goes_to_the_dead_letter_output(self, rel, reason):
        source = os.path.join(self.root, "train", rel)
        found = [r for r in self.rejects if r["source"] == source]
        self.assertLen(found, 1)
        self.assertEqual(found[0]["reason"], reason)
        self.assertTrue(found[0]["error"])
        self.assertEqual(found[0]["split"], "train")
        self.assertEqual(self.metadata["rejects"]["by_reason"][reason], 1)

    @parameterized.named_parameters(
        ("cmyk_jpeg", "n02/cmyk.jpg", images.FROM_CMYK),
        ("png_with_alpha", "n02/alpha.png", images.FROM_ALPHA),
        ("grayscale", "n02/gray.jpg", images.FROM_GRAYSCALE),
    )
    def test_odd_image_is_written_as_rgb_jpeg(self, source_id, conversion):
        parsed = [fixtures.parse(r) for r in self._records()]
        found = [
            p for p in parsed if p[records.SOURCE_ID] == [source_id.encode()]
        ]
        self.assertLen(found, 1)
        jpeg = found[0][records.IMAGE_ENCODED][0]
        pixels = tf.io.decode_jpeg(jpeg, channels=0)  # As stored.
        self.assertEqual(pixels.shape[-1], 3)
        self.assertEqual(
            list(pixels.shape[:2]),
            found[0][records.IMAGE_HEIGHT] + found[0][records.IMAGE_WIDTH],
        )
        self.assertEqual(found[0][records.IMAGE_FORMAT], [b"jpeg"])
        self.assertEqual(self.metadata["conversions"][conversion], 1)

    def test_model_garden_decoder_and_parser(self):
        decoder = classification_input.Decoder()
        parser = classification_input.Parser(
            output_size=[32, 32], num_classes=3
        )
        parse_eval = parser.parse_fn(is_training=False)
        for record in self._records():
            decoded = decoder.decode(tf.constant(record))
            label = int(decoded["image/class/label"])
            self.assertIn(label, (0, 1, 2))
            image, parsed_label = parse_eval(decoded)
            self.assertEqual(image.shape, (32, 32, 3))
            self.assertEqual(int(parsed_label), label)

    def test_same_input_and_seed_give_the_same_bytes(self):
        uri = os.path.join(self.tmp, "again")
        base.execute(
            component.ExampleGen(),
            {},
            {"examples": uri},
            _config(self.root, beam_pipeline_args=IN_MEMORY),
        )
        self.assertEqual(fixtures.read_shards(uri, "train"), self.train)
        self.assertEqual(
            fixtures.read_shards(uri, "validation"), self.validation
        )
        reject_files = sorted(os.listdir(os.path.join(uri, "rejects")))
        self.assertEqual(
            reject_files, sorted(os.listdir(os.path.join(self.uri, "rejects")))
        )
        self.assertLen(reject_files, 16)  # num_reject_shards' default.
        names = ["labels.txt"] + [f"rejects/{n}" for n in reject_files]
        for name in names:
            with open(os.path.join(uri, name), "rb") as a:
                with open(os.path.join(self.uri, name), "rb") as b:
                    self.assertEqual(a.read(), b.read(), name)
        again = base.read_json(os.path.join(uri, "metadata.json"))
        self.assertEqual(again["fingerprint"], self.metadata["fingerprint"])
        self.assertEqual(again["splits"], self.metadata["splits"])

        other = os.path.join(self.tmp, "seed1")
        base.execute(
            component.ExampleGen(),
            {},
            {"examples": other},
            _config(self.root, seed=1, beam_pipeline_args=IN_MEMORY),
        )
        moved = fixtures.read_shards(other, "train")
        self.assertNotEqual(moved, self.train)
        self.assertCountEqual(
            [r for s in moved.values() for r in s],
            [r for s in self.train.values() for r in s],
        )

    def test_a_second_run_into_the_same_output_is_refused(self):
        with mock.patch.object(component.runners, "run") as run:
            with self.assertRaisesRegex(
                ValueError, "already holds a complete ExampleGen output"
            ):
                base.execute(
                    component.ExampleGen(),
                    {},
                    {"examples": self.uri},
                    _config(self.root),
                )
            run.assert_not_called()

    def test_unfinished_output_is_redone_and_overwrite_uncommits_first(self):
        # What a killed run leaves: shards, Beam's _work, no _artifact.json.
        uri = os.path.join(self.tmp, "killed")
        shutil.copytree(self.uri, uri)
        os.remove(os.path.join(uri, base.ARTIFACT_FILE))
        os.makedirs(os.path.join(uri, "_work", "attempt"))
        stale = os.path.join(uri, "Split-train", "stale-shard")
        with open(stale, "wb") as f:
            f.write(b"half")
        config = _config(self.root, beam_pipeline_args=IN_MEMORY)
        base.execute(component.ExampleGen(), {}, {"examples": uri}, config)
        self.assertEqual(fixtures.read_shards(uri, "train"), self.train)
        self.assertFalse(os.path.exists(stale))
        self.assertFalse(os.path.exists(os.path.join(uri, "_work")))
        self.assertTrue(base.is_complete(uri))
        # A rewrite with --overwrite that dies half-way leaves no marker.
        overwrite = _config(
            self.root, beam_pipeline_args=IN_MEMORY, overwrite=True
        )
        with mock.patch.object(
            component.runners, "run", side_effect=RuntimeError("killed")
        ):
            with self.assertRaisesRegex(RuntimeError, "killed"):
                base.execute(
                    component.ExampleGen(), {}, {"examples": uri}, overwrite
                )
        self.assertFalse(base.is_complete(uri))
        with self.assertRaises(base.ArtifactError):
            base.Artifact.read(uri)


if __name__ == "__main__":
    absltest.main()
