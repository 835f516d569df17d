"""The Examples artifact: one layout, one listing, one parse spec."""

import os

import tensorflow as tf
from absl.testing import absltest

from artifacts import core
from artifacts import examples as examples_lib


def _jpeg(value: int, height: int = 12, width: int = 20) -> bytes:
    image = tf.fill([height, width, 3], tf.constant(value, tf.uint8))
    return tf.io.encode_jpeg(image).numpy()


def _artifact(uri, compression, split_counts, multi_label=False):
    artifact = core.Artifact(
        core.EXAMPLES,
        uri,
        examples_lib.properties(split_counts, 3, multi_label, compression),
    )
    artifact.write()
    return artifact


class ExamplesTest(absltest.TestCase):
    def test_label_mapping_by_class_name(self):
        self.assertIsNone(examples_lib.label_mapping(None, ["a", "b"]))
        self.assertIsNone(examples_lib.label_mapping(["a", "b"], ["a", "b"]))
        self.assertEqual(
            examples_lib.label_mapping(["b", "a"], ["a", "b", "c"]), [1, 0]
        )
        with self.assertRaisesRegex(ValueError, "not in the model's labels"):
            examples_lib.label_mapping(["a", "z"], ["a", "b"])

    def setUp(self):
        super().setUp()
        self.uri = self.create_tempdir().full_path

    def _write(self, split, rows, shards, compression):
        return examples_lib.write_split(
            self.uri,
            split,
            (
                examples_lib.jpeg_example(_jpeg(10 * i), labels, f"{split}/{i}")
                for i, labels in enumerate(rows)
            ),
            shards,
            compression,
        )

    def test_records_round_trip_through_the_read_spec(self):
        rows = [[0], [2, 1], [1]]
        written = self._write("train", rows, 2, examples_lib.GZIP)
        self.assertEqual(written["num_examples"], 3)
        self.assertTrue(all(f.endswith(".gz") for f in written["files"]))
        artifact = _artifact(self.uri, examples_lib.GZIP, {"train": 3})
        files = examples_lib.split_files(artifact, "train")
        self.assertEqual(files, written["files"])
        parsed = [
            examples_lib.parse(r)
            for r in examples_lib.records(
                files, examples_lib.compression_of(artifact)
            )
        ]
        # Round-robin over two shards, read shard after shard.
        self.assertEqual(
            [p["labels"].numpy().tolist() for p in parsed],
            [[0], [1], [2, 1]],
        )
        self.assertEqual(parsed[0]["scores"].numpy().tolist(), [])
        image = tf.io.decode_jpeg(parsed[0]["image"])
        self.assertEqual(image.shape.as_list(), [12, 20, 3])

    def test_full_feature_spec_reads_height_width_and_source_id(self):
        serialized = examples_lib.jpeg_example(
            _jpeg(5, 7, 9), [4], "a/b.jpg", scores=[0.5]
        )
        spec = examples_lib.feature_spec(multi_label=False, with_scores=True)
        parsed = tf.io.parse_single_example(serialized, spec)
        self.assertEqual(int(parsed[examples_lib.IMAGE_HEIGHT]), 7)
        self.assertEqual(int(parsed[examples_lib.IMAGE_WIDTH]), 9)
        self.assertEqual(int(parsed[examples_lib.LABEL]), 4)
        self.assertEqual(parsed[examples_lib.SOURCE_ID].numpy(), b"a/b.jpg")

    def test_the_compression_property_overrides_the_file_suffix(self):
        # GZIP data in files without the suffix: only the property can
        # tell, and every reader must honour it.
        os.makedirs(examples_lib.split_dir(self.uri, "eval"))
        path = os.path.join(examples_lib.split_dir(self.uri, "eval"), "part")
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            writer.write(examples_lib.jpeg_example(_jpeg(1), [0], "x"))
        artifact = _artifact(self.uri, examples_lib.GZIP, {"eval": 1})
        files = examples_lib.split_files(artifact, "eval")
        self.assertLen(
            examples_lib.encoded_images(
                files, 5, examples_lib.compression_of(artifact)
            ),
            1,
        )
        with self.assertRaises(tf.errors.DataLossError):
            examples_lib.encoded_images(files, 5, None)

    def test_listing_skips_bookkeeping_files_and_names_missing_splits(self):
        self._write("train", [[0], [1]], 1, examples_lib.NONE)
        directory = examples_lib.split_dir(self.uri, "train")
        for name in ("_SUCCESS", ".part.tmp"):
            with open(os.path.join(directory, name), "w") as f:
                f.write("x")
        artifact = core.Artifact(core.EXAMPLES, self.uri)
        self.assertEqual(
            [
                os.path.basename(f)
                for f in examples_lib.split_files(artifact, "train")
            ],
            ["data_tfrecord-00000-of-00001"],
        )
        self.assertEqual(examples_lib.split_names(artifact), ["train"])
        with self.assertRaisesRegex(core.ArtifactError, r"'test'.*\['train'\]"):
            examples_lib.split_files(artifact, "test")

    def test_read_info_checks_labels_against_num_classes(self):
        self._write("train", [[0]], 1, examples_lib.NONE)
        examples_lib.write_labels(self.uri, ["a", "b"])
        artifact = _artifact(self.uri, examples_lib.NONE, {"train": 1})
        with self.assertRaisesRegex(core.ArtifactError, "num_classes=3"):
            examples_lib.read_info(artifact)
        artifact.properties["num_classes"] = 2
        info = examples_lib.read_info(artifact)
        self.assertEqual(info.labels, ("a", "b"))
        self.assertEqual(info.compression, "")
        self.assertEqual(info.num_examples, {"train": 1})
        self.assertLen(info.split_files("train"), 1)
        with self.assertRaisesRegex(core.ArtifactError, "no split 'x'"):
            info.split_files("x")

    def test_image_examples_parse_with_the_serving_spec(self):
        serialized = examples_lib.image_examples([b"abc", b"de"])
        parsed = tf.io.parse_example(serialized, examples_lib.IMAGE_SPEC)
        self.assertEqual(
            parsed[examples_lib.IMAGE_ENCODED].numpy().tolist(),
            [b"abc", b"de"],
        )


if __name__ == "__main__":
    absltest.main()
