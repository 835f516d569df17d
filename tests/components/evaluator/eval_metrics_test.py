"""Evaluator metrics on cases worked out by hand (and sklearn for AP)."""

import math

import numpy as np
import tensorflow as tf
from sklearn import metrics as sk_metrics

from components.evaluator import metrics, plots


class AccuracyTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.scores = np.array(
            [
                [0.1, 0.6, 0.3],
                [0.5, 0.2, 0.3],
                [0.2, 0.3, 0.5],
                [0.4, 0.35, 0.25],
            ]
        )
        self.labels = np.array([1, 2, 2, 1])

    def test_top1_and_top2(self):
        # Top-1 predictions 1, 0, 2, 0: rows 0 and 2 right.
        self.assertEqual(
            metrics.top_k_accuracy(self.scores, self.labels, 1), 0.5
        )
        # Every label is within its row's two highest scores.
        self.assertEqual(
            metrics.top_k_accuracy(self.scores, self.labels, 2), 1.0
        )

    def test_top_k_larger_than_classes_counts_everything(self):
        self.assertEqual(
            metrics.top_k_accuracy(self.scores, self.labels, 5), 1.0
        )

    def test_label_sets_count_any_member(self):
        # ReaL-style: top-1s are 1, 0, 2, 0. Rows 0 and 1 hold theirs in
        # their sets; row 2's set {0} does not; row 3's set is empty
        # (padding only) and can never be right.
        sets = np.array([[1, -1], [0, 1], [0, -1], [-1, -1]])
        self.assertEqual(metrics.top_k_accuracy(self.scores, sets, 1), 0.5)

    def test_ties_break_toward_lower_id(self):
        ids = metrics.top_k_ids(np.array([[0.3, 0.3, 0.4]]), 3)
        self.assertAllEqual(ids, [[2, 0, 1]])

    def test_per_class_accuracy_and_confusion(self):
        predicted = self.scores.argmax(axis=1)
        accuracy, count = metrics.per_class_accuracy(predicted, self.labels, 4)
        # Class 0 has no example; 1 is right once of twice; 2 once of twice.
        self.assertTrue(math.isnan(accuracy[0]))
        self.assertAllClose(accuracy[1:3], [0.5, 0.5])
        self.assertAllEqual(count, [0, 2, 2, 0])
        self.assertEqual(
            metrics.confusion_counts(predicted, self.labels),
            {(1, 1): 1, (1, 0): 1, (2, 0): 1, (2, 2): 1},
        )


class LossTest(tf.test.TestCase):
    def test_softmax_cross_entropy(self):
        # Softmax of log([1, 2, 1]) is [0.25, 0.5, 0.25]: losses ln 2 and
        # ln 4 for labels 1 and 0.
        logits = np.log([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]])
        self.assertAllClose(
            metrics.softmax_cross_entropy(logits, np.array([1, 0])),
            1.5 * math.log(2),
        )

    def test_softmax_cross_entropy_is_stable_for_large_logits(self):
        logits = np.array([[1000.0, 0.0]])
        self.assertAllClose(
            metrics.softmax_cross_entropy(logits, np.array([1])), 1000.0
        )

    def test_sigmoid_cross_entropy_sums_classes(self):
        # Zero logits cost ln 2 per class whatever the target.
        self.assertAllClose(
            metrics.sigmoid_cross_entropy(np.zeros((3, 2)), np.eye(3, 2)),
            2 * math.log(2),
        )
        # Saturated logits: right costs ~0, wrong costs |logit|.
        self.assertAllClose(
            metrics.sigmoid_cross_entropy(
                np.array([[1000.0, -1000.0]]), np.array([[1.0, 1.0]])
            ),
            1000.0,
        )


class CalibrationTest(tf.test.TestCase):
    def test_two_bins_by_hand(self):
        # Bins (0, .5] and (.5, 1]: 0.5 belongs to the first. First bin:
        # confidences .5 .5 .4 (mean .4667), accuracy 1/3; second: .6, 1.
        cal = metrics.calibration(
            np.array([0.6, 0.5, 0.5, 0.4]), np.array([1, 0, 1, 0]), 2
        )
        self.assertAllEqual(cal.count, [3, 1])
        self.assertAllClose(cal.accuracy, [1 / 3, 1.0])
        self.assertAllClose(cal.confidence, [1.4 / 3, 0.6])
        self.assertAllClose(cal.ece, 0.75 * abs(1 / 3 - 1.4 / 3) + 0.25 * 0.4)

    def test_perfectly_calibrated_is_zero(self):
        confidence = np.array([0.25] * 4 + [0.75] * 4)
        correct = np.array([1, 0, 0, 0, 1, 1, 1, 0])
        self.assertAllClose(metrics.calibration(confidence, correct).ece, 0)

    def test_json_has_no_nan(self):
        data = metrics.calibration(np.array([0.9]), np.array([1])).to_json()
        self.assertIsNone(data["bin_accuracy"][0])
        # 0.9 falls in (13/15, 14/15].
        self.assertEqual(data["bin_count"][13], 1)


class MultiLabelTest(tf.test.TestCase):
    def test_average_precision_by_hand(self):
        # Ranked hits T F T F: precision 1 at recall .5, 2/3 at recall 1.
        ap = metrics.average_precision(
            np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool)
        )
        self.assertAllClose(ap, 0.5 * 1 + 0.5 * 2 / 3)

    def test_tied_scores_are_one_threshold(self):
        ap = metrics.average_precision(
            np.full(4, 0.5), np.array([1, 0, 1, 0], bool)
        )
        self.assertAllClose(ap, 0.5)

    def test_average_precision_matches_sklearn(self):
        rng = np.random.default_rng(3)
        for _ in range(5):
            # Rounded scores create ties, the case that needs care.
            scores = np.round(rng.random(40), 1)
            positives = rng.random(40) < 0.3
            positives[0] = True
            self.assertAllClose(
                metrics.average_precision(scores, positives),
                sk_metrics.average_precision_score(positives, scores),
            )

    def test_map_skips_classes_without_positives(self):
        scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4]])
        targets = np.array([[1, 0, 0], [0, 1, 0]], bool)
        mean_ap, per_class = metrics.mean_average_precision(scores, targets)
        self.assertAllClose(per_class[:2], [1.0, 1.0])
        self.assertTrue(np.isnan(per_class[2]))
        self.assertAllClose(mean_ap, 1.0)

    def test_precision_at_1(self):
        scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        targets = np.array([[1, 0], [1, 0], [1, 1]], bool)
        self.assertAllClose(metrics.precision_at_1(scores, targets), 2 / 3)

    def test_multi_hot_ignores_padding(self):
        hot = metrics.multi_hot(np.array([[2, 0], [1, -1], [-1, -1]]), 3)
        self.assertAllEqual(
            hot, [[True, False, True], [False, True, False], [False] * 3]
        )


class PlotsTest(tf.test.TestCase):
    def test_confusion_classes_pick_the_most_confused(self):
        counts = {(0, 0): 50, (3, 4): 7, (4, 3): 1, (1, 2): 2}
        shown = plots.confusion_classes(counts, num_classes=40, max_classes=3)
        # Errors per class: 3 -> 8, 4 -> 8, 1 -> 2, 2 -> 2 (tie: lower id).
        self.assertEqual(shown, [1, 3, 4])

    def test_plots_are_png(self):
        cal = metrics.calibration(np.array([0.2, 0.9]), np.array([0, 1]))
        for data in (
            plots.reliability_png(cal, "t"),
            plots.confusion_matrix_png({(0, 1): 2, (1, 1): 1}, ["a", "b"], "t"),
        ):
            self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    tf.test.main()
