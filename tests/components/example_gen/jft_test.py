"""End-to-end: a JFT-style multi-label manifest under a {SPAN} pattern."""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from official.vision.dataloaders import classification_input

from components import base
from components.example_gen import component, images, records
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures

IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
VOCAB = ("cat", "dog", "bird", "fish", "tree")


class JftPipelineTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        data = os.path.join(cls.tmp, "jft")
        for span in (3, 11):  # 11 is the latest span: numeric order.
            rows = []
            for i in range(10):
                name = f"img/{i}.jpg"
                fixtures.write(
                    f"{data}/span-{span}/{name}", fixtures.good_jpeg(i)
                )
                labels = [VOCAB[i % 5], VOCAB[(i + 2) % 5]]
                rows.append(
                    {
                        "image": name,
                        "labels": labels,
                        "scores": [0.9, 0.3 + i / 100],
                    }
                )
            rows.append({"image": "img/0.jpg", "labels": ["unicorn"]})
            rows.append({"image": "img/missing.jpg", "labels": ["cat"]})
            rows.append({"image": "img/bad.jpg", "labels": [4, 1]})
            fixtures.write(
                f"{data}/span-{span}/img/bad.jpg", fixtures.truncated_jpeg(5)
            )
            fixtures.write_jsonl(f"{data}/span-{span}/train.jsonl", rows)
            fixtures.write(
                f"{data}/span-{span}/val.csv",
                b"image,labels,id\nimg/1.jpg,fish|3,v-1\nimg/2.jpg,0,v-2\n",
            )
        vocab = fixtures.write(
            f"{cls.tmp}/vocab.txt", "\n".join(VOCAB).encode()
        )
        cls.uri = os.path.join(cls.tmp, "examples")
        config = config_lib.ExampleGenConfig(
            source=config_lib.JFT,
            input=f"{data}/span-{{SPAN}}/train.jsonl",
            validation_input=f"{data}/span-{{SPAN}}/val.csv",
            labels_vocab=vocab,
            num_shards=2,
            num_eval_shards=1,
            beam_pipeline_args=IN_MEMORY,
        )
        cls.artifact = base.execute(
            component.ExampleGen(), {}, {"examples": cls.uri}, config
        )["examples"]
        cls.data = data
        cls.metadata = base.read_json(os.path.join(cls.uri, "metadata.json"))
        cls.train = [
            r
            for s in fixtures.read_shards(cls.uri, "train").values()
            for r in s
        ]
        cls.validation = [
            r
            for s in fixtures.read_shards(cls.uri, "validation").values()
            for r in s
        ]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)
        super().tearDownClass()

    def test_latest_span_is_used_and_recorded(self):
        self.assertEqual(self.artifact.properties["span"], 11)
        self.assertEqual(self.metadata["span"], 11)
        self.assertEqual(
            self.metadata["inputs"]["input"], f"{self.data}/span-11/train.jsonl"
        )
        self.assertTrue(self.artifact.properties["multi_label"])

    def test_labels_and_scores(self):
        parsed = {
            p[records.SOURCE_ID][0].decode(): p
            for p in map(fixtures.parse, self.train + self.validation)
        }
        self.assertLen(parsed, 12)
        for i in range(10):
            p = parsed[f"img/{i}.jpg"]
            pairs = sorted([(i % 5, 0.9), ((i + 2) % 5, 0.3 + i / 100)])
            self.assertEqual(p[records.LABEL], [a for a, _ in pairs])
            np.testing.assert_allclose(
                p[records.SCORE], [b for _, b in pairs], rtol=1e-6
            )
        self.assertEqual(parsed["v-1"][records.LABEL], [3])  # Name, id: same.
        self.assertEqual(parsed["v-2"][records.LABEL], [0])

    def test_unknown_label_and_bad_rows_go_to_the_dead_letter_output(self):
        rejects = {
            (os.path.basename(r["source"]), r["reason"])
            for r in fixtures.read_rejects(self.uri)
        }
        self.assertEqual(
            rejects,
            {
                ("0.jpg", records.UNKNOWN_LABEL),
                ("missing.jpg", records.MISSING_FILE),
                ("bad.jpg", images.TRUNCATED),
            },
        )
        m = self.metadata
        self.assertEqual(
            (m["written"], m["rejected"], m["discovered"]), (12, 3, 15)
        )

    def test_model_garden_multilabel_decoder_and_parser(self):
        decoder = classification_input.Decoder(is_multilabel=True)
        parser = classification_input.Parser(
            output_size=[24, 24], num_classes=len(VOCAB), is_multilabel=True
        )
        parse_eval = parser.parse_fn(is_training=False)
        for record in self.train:
            decoded = decoder.decode(tf.constant(record))
            labels = tf.sparse.to_dense(decoded["image/class/label"]).numpy()
            self.assertLen(labels, 2)
            image, multi_hot = parse_eval(decoded)
            self.assertEqual(image.shape, (24, 24, 3))
            want = np.zeros(len(VOCAB), np.float32)
            want[labels] = 1.0
            np.testing.assert_array_equal(multi_hot, want)


if __name__ == "__main__":
    absltest.main()
