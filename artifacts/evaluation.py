"""The ModelEvaluation artifact: the Evaluator's report and its plots.

Layout under a ModelEvaluation artifact's URI:

  metrics.json                  the report (below)
  confusion_matrix.png          the main set's confusion matrix
                                (single-label models only)
  reliability_diagram.png       the main set's calibration
  <set>-confusion_matrix.png,   the same for each extra evaluation set
  <set>-reliability_diagram.png

`metrics.json` holds:

  model                 the evaluated Model's URI
  multi_label           whether the model is multi-label
  metrics               the main set's metrics by name (numbers)
  calibration           the main set's reliability bins
  per_class             per-class accuracy (single-label models)
  extra_sets            {set name: {metrics, calibration}}
  baseline_model,       the baseline's URI and its report (same keys),
  baseline              when there was a baseline
  validation            {blessed, has_baseline, checks}

The artifact's properties repeat the main set's numeric metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from artifacts import core

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability_diagram.png"
MAIN_SET = ""  # The name of the main evaluation set.

# Keys of metrics.json.
MODEL = "model"
MULTI_LABEL = "multi_label"
METRICS = "metrics"
CALIBRATION = "calibration"
PER_CLASS = "per_class"
EXTRA_SETS = "extra_sets"
BASELINE_MODEL = "baseline_model"
BASELINE = "baseline"
VALIDATION = "validation"


def plot_path(uri: str, plot: str, set_name: str = MAIN_SET) -> str:
    """Where a plot of one evaluation set goes.

    Args:
      uri: the ModelEvaluation artifact's root.
      plot: `CONFUSION_PNG` or `RELIABILITY_PNG`.
      set_name: the evaluation set (`MAIN_SET` for the main split).

    Returns:
      `<uri>/[<set>-]<plot>`.
    """
    prefix = f"{set_name}-" if set_name else ""
    return os.path.join(uri, prefix + plot)


def write_report(artifact: core.Artifact, report: Mapping[str, Any]) -> None:
    """Writes metrics.json and repeats the main metrics as properties.

    Args:
      artifact: the ModelEvaluation artifact.
      report: the report, with the keys the module docstring lists.

    Raises:
      ValueError: the report has no `metrics`.
    """
    if not isinstance(report.get(METRICS), Mapping):
        raise ValueError(f"An evaluation report needs {METRICS!r}.")
    core.write_json(os.path.join(artifact.uri, METRICS_FILE), dict(report))
    artifact.properties.update(numbers(report[METRICS]))


def read_report(uri: str) -> dict[str, Any] | None:
    """The report of a ModelEvaluation artifact, None when there is none.

    Raises:
      core.ArtifactError: metrics.json is not JSON, or has no `metrics`.
    """
    path = os.path.join(uri, METRICS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    report = core.read_json(path)
    if not isinstance(report, dict) or not isinstance(
        report.get(METRICS), dict
    ):
        raise core.ArtifactError(
            f"{path} has no {METRICS!r} object: not an evaluation report. "
            "Re-run the Evaluator."
        )
    return report


def main_metrics(uri: str) -> dict[str, float]:
    """The main set's numeric metrics ({} when there is no report)."""
    report = read_report(uri)
    return {} if report is None else numbers(report[METRICS])


def confusion_png(uri: str, set_name: str = MAIN_SET) -> str | None:
    """The confusion matrix plot of a set, None when none was written."""
    path = plot_path(uri, CONFUSION_PNG, set_name)
    return path if tf.io.gfile.exists(path) else None


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics mapping (not bools or lists)."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
