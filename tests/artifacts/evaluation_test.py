"""The ModelEvaluation artifact: the report's schema and plot names."""

import json
import os

from absl.testing import absltest

from artifacts import core, evaluation


class EvaluationTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.uri = self.create_tempdir().full_path
        self.artifact = core.Artifact(core.MODEL_EVALUATION, self.uri)

    def test_report_round_trips_and_sets_numeric_properties(self):
        evaluation.write_report(
            self.artifact,
            {
                evaluation.MODEL: "/m",
                evaluation.METRICS: {"top1": 0.5, "ok": True, "hist": [1]},
            },
        )
        self.assertEqual(self.artifact.properties, {"top1": 0.5})
        self.assertEqual(evaluation.main_metrics(self.uri), {"top1": 0.5})
        self.assertEqual(evaluation.read_report(self.uri)["model"], "/m")

    def test_no_report_reads_as_empty(self):
        self.assertIsNone(evaluation.read_report(self.uri))
        self.assertEqual(evaluation.main_metrics(self.uri), {})

    def test_a_report_without_metrics_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "metrics"):
            evaluation.write_report(self.artifact, {"top1": 0.5})
        # An older flat file (no `metrics` object) is named, not guessed at.
        with open(os.path.join(self.uri, evaluation.METRICS_FILE), "w") as f:
            json.dump({"top1": 0.5}, f)
        with self.assertRaisesRegex(core.ArtifactError, "Re-run"):
            evaluation.main_metrics(self.uri)

    def test_plot_paths_and_confusion_lookup(self):
        self.assertEqual(
            evaluation.plot_path(self.uri, evaluation.CONFUSION_PNG, "v2"),
            os.path.join(self.uri, "v2-confusion_matrix.png"),
        )
        self.assertIsNone(evaluation.confusion_png(self.uri))
        path = evaluation.plot_path(self.uri, evaluation.CONFUSION_PNG)
        with open(path, "wb") as f:
            f.write(b"png")
        self.assertEqual(evaluation.confusion_png(self.uri), path)


if __name__ == "__main__":
    absltest.main()
