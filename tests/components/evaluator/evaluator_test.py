"""The Evaluator component on models whose answers are known in advance.

Each model is coatnet-tiny with a zero classifier kernel, so every image
gets the same logits (the classifier bias) and every metric follows from
the labels alone, worked out by hand below.
"""

import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from artifacts import blessing as blessing_artifact
from artifacts import evaluation
from components import base
from components.evaluator import blessing
from components.evaluator import component as evaluator
from tests.serving import testutil

LABELS = [f"c{i}" for i in range(6)]
# The candidate favours class 0, the baseline class 1.
GOOD = np.array([0.5, 0.2, 0.12, 0.1, 0.05, 0.03])
BAD = np.array([0.1, 0.4, 0.2, 0.15, 0.1, 0.05])
MAIN_LABELS = [0, 0, 0, 0, 1, 2, 3, 4, 5, 5]


class EvaluatorTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # A fresh directory per run: concurrent runs must not share one.
        root = cls.root = tempfile.mkdtemp(
            prefix="evaluator_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        cls.good, _ = testutil.write_model_artifact(
            f"{root}/good", LABELS, logits=np.log(GOOD)
        )
        cls.bad, _ = testutil.write_model_artifact(
            f"{root}/bad", LABELS, logits=np.log(BAD)
        )
        cls.examples = testutil.write_examples_artifact(
            f"{root}/examples",
            {"train": [[0]], "validation": [[i] for i in MAIN_LABELS]},
            LABELS,
        )
        # ImageNet-ReaL-like: label sets, one image without any label.
        cls.real = testutil.write_examples_artifact(
            f"{root}/real",
            {"validation": [[0, 1], [2], [1, 3], [], [0]]},
            LABELS,
            shards=1,
        )
        # ImageNet-V2-like, with its own class order (names reversed).
        cls.v2 = testutil.write_examples_artifact(
            f"{root}/v2", {"test": [[5], [5], [4], [0]]}, LABELS[::-1]
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def _run(self, name, inputs, config):
        return base.execute(
            evaluator.Evaluator(),
            inputs,
            {
                "evaluation": f"{self.root}/{name}/evaluation",
                "blessing": f"{self.root}/{name}/blessing",
            },
            config,
        )

    def test_known_metrics_extra_sets_and_blessing_against_baseline(self):
        config = evaluator.EvaluatorConfig(
            batch_size=4,
            thresholds=blessing.parse_thresholds(
                ["top1>=0.3", "real/real_top1>=0.5"], ["top1>=-1e-10"]
            ),
            extra_names=("real", "v2"),
        )
        outputs = self._run(
            "with_baseline",
            {
                "examples": self.examples,
                "model": self.good,
                "baseline_model": self.bad,
                "extra_examples_1": self.real,
                "extra_examples_2": self.v2,
            },
            config,
        )
        uri = outputs["evaluation"].uri
        report = base.read_json(os.path.join(uri, evaluation.METRICS_FILE))
        m = report["metrics"]
        # Every prediction is class 0 with confidence 0.5.
        self.assertAllClose(m["top1"], 0.4)  # Four labels are 0.
        self.assertAllClose(m["top5"], 0.8)  # Labels 0-4; two are 5.
        want_loss = -np.mean(np.log(GOOD[MAIN_LABELS]))
        self.assertAllClose(m["loss"], want_loss, atol=1e-5)
        self.assertAllClose(m["ece"], 0.1, atol=1e-6)  # |0.4 - 0.5|
        self.assertEqual(m["num_examples"], 10)
        self.assertEqual(
            report["per_class"]["c0"], {"accuracy": 1.0, "count": 4}
        )
        self.assertEqual(
            report["per_class"]["c5"], {"accuracy": 0.0, "count": 2}
        )
        # ReaL: the empty set is left out; sets {0,1} and {0} hold class 0.
        real = report["extra_sets"]["real"]["metrics"]
        self.assertEqual(real["num_examples"], 4)
        self.assertEqual(real["num_without_labels"], 1)
        self.assertAllClose(real["real_top1"], 0.5)
        self.assertAllClose(real["real_top5"], 1.0)
        # V2's ids 5, 5, 4, 0 are c0, c0, c1, c5 in the model's order.
        v2 = report["extra_sets"]["v2"]["metrics"]
        self.assertAllClose(v2["top1"], 0.5)
        self.assertAllClose(v2["top5"], 0.75)
        # The baseline always says class 1 (confidence 0.4).
        self.assertAllClose(report["baseline"]["metrics"]["top1"], 0.1)
        self.assertAllClose(report["baseline"]["metrics"]["ece"], 0.3)
        self.assertTrue(report["validation"]["blessed"])
        self.assertEqual(
            [c["passed"] for c in report["validation"]["checks"]],
            [True, True, True],
        )
        self.assertTrue(blessing_artifact.is_blessed(outputs["blessing"]))
        self.assertTrue(
            tf.io.gfile.exists(f"{outputs['blessing'].uri}/BLESSED")
        )
        self.assertEqual(outputs["evaluation"].properties["top1"], m["top1"])
        for name in (
            evaluation.CONFUSION_PNG,
            evaluation.RELIABILITY_PNG,
            "real-" + evaluation.RELIABILITY_PNG,
            "v2-" + evaluation.CONFUSION_PNG,
        ):
            with tf.io.gfile.GFile(os.path.join(uri, name), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", name)

    def test_worse_than_baseline_is_not_blessed_and_no_baseline_is(self):
        config = evaluator.EvaluatorConfig(
            batch_size=8,
            thresholds=blessing.parse_thresholds(
                ["top1>=0.05"], ["top1>=-1e-10"]
            ),
        )
        worse = self._run(
            "worse",
            {
                "examples": self.examples,
                "model": self.bad,
                "baseline_model": self.good,
            },
            config,
        )
        self.assertFalse(blessing_artifact.is_blessed(worse["blessing"]))
        self.assertTrue(
            tf.io.gfile.exists(f"{worse['blessing'].uri}/NOT_BLESSED")
        )
        report = base.read_json(
            f"{worse['evaluation'].uri}/{evaluation.METRICS_FILE}"
        )
        checks = report["validation"]["checks"]
        self.assertEqual([c["kind"] for c in checks], ["value", "change"])
        self.assertEqual([c["passed"] for c in checks], [True, False])
        # Same model and gates, nothing pushed yet: value thresholds only.
        alone = self._run(
            "no_baseline",
            {"examples": self.examples, "model": self.bad},
            config,
        )
        self.assertTrue(blessing_artifact.is_blessed(alone["blessing"]))
        report = base.read_json(
            f"{alone['evaluation'].uri}/{evaluation.METRICS_FILE}"
        )
        self.assertFalse(report["validation"]["has_baseline"])
        self.assertIsNone(report["validation"]["checks"][1]["passed"])

    def test_multi_label_model_known_map_and_precision(self):
        logits = np.array([2.0, 0.0, -1.0, -3.0])
        q = 1 / (1 + np.exp(-logits))
        model, _ = testutil.write_model_artifact(
            f"{self.root}/multi_model",
            LABELS[:4],
            multi_label=True,
            logits=logits,
        )
        rows = [[0, 1], [1], [0, 2], [3], [0], [1, 2]]
        examples = testutil.write_examples_artifact(
            f"{self.root}/multi_examples", {"validation": rows}, LABELS[:4]
        )
        outputs = self._run(
            "multi",
            {"examples": examples, "model": model},
            evaluator.EvaluatorConfig(
                thresholds=blessing.parse_thresholds(["map>=0.9"], [])
            ),
        )
        report = base.read_json(
            f"{outputs['evaluation'].uri}/{evaluation.METRICS_FILE}"
        )
        m = report["metrics"]
        prevalence = np.array([3, 3, 2, 1]) / 6
        # Equal scores for every image: each class's AP is its prevalence.
        self.assertAllClose(m["map"], prevalence.mean(), atol=1e-6)
        # The top class is always 0, present in half of the images.
        self.assertAllClose(m["precision_at_1"], 0.5)
        targets = np.zeros((6, 4))
        for i, ids in enumerate(rows):
            targets[i, ids] = 1
        bce = -(targets * np.log(q) + (1 - targets) * np.log(1 - q))
        self.assertAllClose(m["loss"], bce.sum(axis=1).mean(), atol=1e-5)
        # One distinct confidence per class, each in its own bin.
        self.assertAllClose(m["ece"], np.abs(prevalence - q).mean(), atol=1e-6)
        self.assertTrue(report["multi_label"])
        self.assertFalse(blessing_artifact.is_blessed(outputs["blessing"]))
        self.assertFalse(
            tf.io.gfile.exists(
                f"{outputs['evaluation'].uri}/{evaluation.CONFUSION_PNG}"
            )
        )

    def test_unknown_split_names_the_existing_ones(self):
        with self.assertRaisesRegex(base.ArtifactError, "splits: .*validation"):
            self._run(
                "bad_split",
                {"examples": self.examples, "model": self.good},
                evaluator.EvaluatorConfig(split="test"),
            )

    def test_config_round_trips_through_json(self):
        config = evaluator.EvaluatorConfig(
            thresholds=blessing.parse_thresholds(["top1>=0.5"], ["loss<=1%"])
        )
        again = base.config_from_json(
            evaluator.EvaluatorConfig, base.config_to_json(config)
        )
        self.assertEqual(again, config)
        self.assertTrue(math.isclose(again.thresholds[1].relative, 0.01))


if __name__ == "__main__":
    tf.test.main()
