"""Blessing rules: value thresholds, change thresholds, no baseline."""

import tensorflow as tf

from artifacts import blessing as blessing_artifact
from components import base
from components.evaluator import blessing

T = blessing.MetricThreshold


class ValidateTest(tf.test.TestCase):
    def test_value_thresholds_are_inclusive_bounds(self):
        gates = [T("top1", lower_bound=0.7), T("ece", upper_bound=0.1)]
        ok, _ = blessing.validate(gates, {"top1": 0.7, "ece": 0.1}, None)
        self.assertTrue(ok)
        ok, checks = blessing.validate(gates, {"top1": 0.69, "ece": 0.05}, None)
        self.assertFalse(ok)
        self.assertEqual([c.passed for c in checks], [False, True])

    def test_missing_metric_fails(self):
        ok, checks = blessing.validate([T("map", lower_bound=0)], {}, None)
        self.assertFalse(ok)
        self.assertIn("not computed", checks[0].message)

    def test_no_baseline_skips_change_thresholds(self):
        gates = [
            T("top1", lower_bound=0.5),
            T("top1", direction=blessing.HIGHER_IS_BETTER, absolute=0.0),
        ]
        ok, checks = blessing.validate(gates, {"top1": 0.6}, None)
        self.assertTrue(ok)
        self.assertEqual([c.passed for c in checks], [True, None])
        # Value thresholds still decide without a baseline.
        ok, _ = blessing.validate(gates, {"top1": 0.4}, None)
        self.assertFalse(ok)

    def test_higher_is_better_absolute(self):
        # TFX's usual gate: no worse than the baseline (within 1e-10).
        gate = [T("top1", direction=blessing.HIGHER_IS_BETTER, absolute=-1e-10)]
        self.assertTrue(
            blessing.validate(gate, {"top1": 0.8}, {"top1": 0.8})[0]
        )
        self.assertFalse(
            blessing.validate(gate, {"top1": 0.79}, {"top1": 0.8})[0]
        )

    def test_lower_is_better_relative(self):
        # The loss may grow by at most 10% of the baseline's.
        gate = [T("loss", direction=blessing.LOWER_IS_BETTER, relative=0.1)]
        self.assertTrue(
            blessing.validate(gate, {"loss": 1.09}, {"loss": 1.0})[0]
        )
        self.assertFalse(
            blessing.validate(gate, {"loss": 1.12}, {"loss": 1.0})[0]
        )

    def test_relative_against_zero_baseline_fails(self):
        gate = [T("ece", direction=blessing.LOWER_IS_BETTER, relative=0.5)]
        ok, _ = blessing.validate(gate, {"ece": 0.0}, {"ece": 0.0})
        self.assertFalse(ok)

    def test_extra_set_metrics_by_prefix(self):
        gate = [T("v2/top1", lower_bound=0.5)]
        self.assertTrue(blessing.validate(gate, {"v2/top1": 0.6}, None)[0])


class ParseTest(tf.test.TestCase):
    def test_value_and_change_specs(self):
        parsed = blessing.parse_thresholds(
            ["top1>=0.7", "ece <= 0.1"], ["top1>=-1e-10", "loss<=5%"]
        )
        self.assertEqual(
            parsed,
            (
                T("top1", lower_bound=0.7),
                T("ece", upper_bound=0.1),
                T(
                    "top1",
                    direction=blessing.HIGHER_IS_BETTER,
                    absolute=-1e-10,
                ),
                T("loss", direction=blessing.LOWER_IS_BETTER, relative=0.05),
            ),
        )

    def test_bad_specs_are_named(self):
        with self.assertRaisesRegex(ValueError, "'top1=0.7'"):
            blessing.parse_thresholds(["top1=0.7"], [])
        with self.assertRaisesRegex(ValueError, "no %"):
            blessing.parse_thresholds(["top1>=70%"], [])

    def test_change_bound_needs_direction(self):
        with self.assertRaisesRegex(ValueError, "no direction"):
            T("top1", absolute=0.0)

    def test_from_json(self):
        self.assertEqual(
            blessing.thresholds_from_json(
                [{"metric": "map", "lower_bound": 1}]
            ),
            (T("map", lower_bound=1),),
        )


class MarkerTest(tf.test.TestCase):
    def test_marker_and_property_are_written_and_replaced(self):
        uri = self.create_tempdir().full_path
        artifact = base.Artifact(base.MODEL_BLESSING, uri)
        blessing_artifact.write(artifact, True)
        self.assertTrue(blessing_artifact.is_blessed(artifact))
        blessing_artifact.write(artifact, False)
        self.assertFalse(blessing_artifact.is_blessed(artifact))
        self.assertEqual(
            sorted(tf.io.gfile.listdir(uri)),
            [blessing_artifact.NOT_BLESSED_FILE],
        )
        self.assertEqual(artifact.properties["blessed"], 0)


if __name__ == "__main__":
    tf.test.main()
