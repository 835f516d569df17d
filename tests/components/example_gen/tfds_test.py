"""End-to-end: TFDS datasets, from TFDS's own test utilities, no download.

- `imagenet2012_real` under `tfds.testing.mock_data` (ReaL multi-labels);
  the mock lives in this process, so the runner runs in process too.
- A dataset prepared in the test with `tfds.folder_dataset.write_metadata`
  (grayscale PNG images, two shards), read by directory.
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import absltest

from components import base
from components.example_gen import component, images, records
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures

IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def _prepare_tiny_dataset(data_dir: str) -> str:
    """Writes a 2-shard train and a 1-shard test split with TFDS metadata."""
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=["cat", "dog", "owl"]),
            "file_name": tfds.features.Text(),
        }
    )
    out = os.path.join(data_dir, "tiny_pets", "1.0.0")
    tf.io.gfile.makedirs(out)
    layout = {"train": (0, 6, 2), "test": (6, 9, 1)}
    for split, (start, stop, shards) in layout.items():
        rows = list(range(start, stop))
        for shard in range(shards):
            name = f"tiny_pets-{split}.tfrecord-{shard:05d}-of-{shards:05d}"
            with tf.io.TFRecordWriter(os.path.join(out, name)) as writer:
                for i in rows[shard::shards]:
                    pixels = fixtures.photo_like(20 + i, 24, i)[..., :1]
                    writer.write(
                        features.serialize_example(
                            {
                                "image": pixels,
                                "label": i % 3,
                                "file_name": f"pet_{i}.png",
                            }
                        )
                    )
    tfds.folder_dataset.write_metadata(
        data_dir=out,
        features=features,
        split_infos=None,  # Computed from the files.
        filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    )
    return out


class TfdsPipelineTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)

    def test_prepared_dataset_by_directory(self):
        dataset_dir = _prepare_tiny_dataset(os.path.join(self.tmp, "tfds"))
        uri = os.path.join(self.tmp, "examples")
        config = config_lib.ExampleGenConfig(
            source=config_lib.TFDS,
            input=dataset_dir,
            num_shards=2,
            num_eval_shards=1,
            beam_pipeline_args=IN_MEMORY,
        )
        artifact = base.execute(
            component.ExampleGen(), {}, {"examples": uri}, config
        )["examples"]
        self.assertEqual(artifact.properties["split_names"], ["train", "test"])
        self.assertEqual(
            artifact.properties["num_examples"], {"train": 6, "test": 3}
        )
        metadata = base.read_json(os.path.join(uri, "metadata.json"))
        self.assertEqual(metadata["written"], metadata["discovered"])
        self.assertEqual(metadata["conversions"][images.FROM_GRAYSCALE], 9)
        with open(os.path.join(uri, "labels.txt")) as f:
            self.assertEqual(f.read().split(), ["cat", "dog", "owl"])
        parsed = [
            fixtures.parse(r)
            for s in fixtures.read_shards(uri, "train").values()
            for r in s
        ]
        by_id = {p[records.SOURCE_ID][0].decode(): p for p in parsed}
        self.assertEqual(sorted(by_id), [f"pet_{i}.png" for i in range(6)])
        for i in range(6):
            p = by_id[f"pet_{i}.png"]
            self.assertEqual(p[records.LABEL], [i % 3])
            rgb = tf.io.decode_jpeg(p[records.IMAGE_ENCODED][0], channels=0)
            self.assertEqual(rgb.shape, (20 + i, 24, 3))

    def test_imagenet_real_multilabel_with_mock_data(self):
        uri = os.path.join(self.tmp, "real")
        config = config_lib.ExampleGenConfig(
            source=config_lib.TFDS,
            input="imagenet2012_real",
            tfds_data_dir=os.path.join(self.tmp, "no_data_here"),
            tfds_splits=("validation",),
            tfds_label_key="real_label",
            num_eval_shards=2,
            beam_pipeline_args=IN_MEMORY,
        )
        with tfds.testing.mock_data(num_examples=5):
            expected = list(
                tfds.as_numpy(
                    tfds.builder("imagenet2012_real").as_dataset(
                        split="validation",
                        decoders={"image": tfds.decode.SkipDecoding()},
                    )
                )
            )
            artifact = base.execute(
                component.ExampleGen(), {}, {"examples": uri}, config
            )["examples"]
        props = artifact.properties
        self.assertEqual(props["split_names"], ["validation"])
        self.assertEqual(props["num_classes"], 1000)
        self.assertTrue(props["multi_label"])
        metadata = base.read_json(os.path.join(uri, "metadata.json"))
        self.assertEqual(metadata["label_map"][0]["synset"], "n01440764")
        self.assertEqual(
            metadata["written"] + metadata["rejected"], metadata["discovered"]
        )
        self.assertEqual(metadata["discovered"], 5)
        written = {
            p[records.SOURCE_ID][0]: p
            for s in fixtures.read_shards(uri, "validation").values()
            for p in map(fixtures.parse, s)
        }
        for example in expected:
            want = sorted(set(np.asarray(example["real_label"]).tolist()))
            if want:
                got = written[example["file_name"]][records.LABEL]
                self.assertEqual(got, want)

    def test_unprepared_dataset_fails_before_the_pipeline(self):
        config = config_lib.ExampleGenConfig(
            source=config_lib.TFDS,
            input="imagenet2012",
            tfds_data_dir=os.path.join(self.tmp, "empty"),
            beam_pipeline_args=IN_MEMORY,
        )
        uri = os.path.join(self.tmp, "nothing")
        with self.assertRaisesRegex(ValueError, "--input=imagenet2012"):
            base.execute(component.ExampleGen(), {}, {"examples": uri}, config)
        self.assertEqual(os.listdir(uri), [])


if __name__ == "__main__":
    absltest.main()
