"""The Evaluator component: metrics, plots and a blessing for a Model.

Inputs: `examples` (Examples; the `config.split` split is the main
evaluation), `model` (Model), optional `baseline_model` (Model: the
currently pushed one) and optional `extra_examples_1..3` (Examples such as
ImageNet-V2 or ImageNet-ReaL, reported beside the main split).

Outputs:
  evaluation (ModelEvaluation): `metrics.json`, `confusion_matrix.png`
    (single-label models), `reliability_diagram.png`, and the same plots for
    each extra set prefixed with its name.
  blessing (ModelBlessing): an empty `BLESSED` or `NOT_BLESSED` file and
    the property `blessed` = 1/0, as TFX's Evaluator writes.

What is reported depends on the model and the data:
  single-label model, one label per image: top1, top5, loss (softmax
    cross-entropy), ece, per-class accuracy, confusion matrix;
  single-label model, label sets (ReaL): real_top1, real_top5 over images
    with at least one label, ece of the top-1 confidence;
  multi-label model: map, precision_at_1, loss (sigmoid cross-entropy,
    summed over classes), ece over every (image, class) probability.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from artifacts import blessing as blessing_lib
from artifacts import evaluation as evaluation_lib
from artifacts import examples as examples_lib
from artifacts import model as model_io
from components import base
from components.evaluator import blessing as thresholds_lib
from components.evaluator import examples_io, metrics, plots

EXTRA_INPUTS = ("extra_examples_1", "extra_examples_2", "extra_examples_3")


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """The Evaluator's execution properties.

    Attributes:
      split: the main evaluation split of `examples`.
      batch_size: images per forward pass.
      max_examples: evaluate at most this many images per set (0: all).
      ece_bins: equal-width bins of the calibration error.
      thresholds: the blessing gates (see `blessing.MetricThreshold`).
      extra_names: report names of `extra_examples_1..3`, in order.
      extra_splits: their splits; empty entries mean the artifact's only
        split, else `split`.
    """

    split: str = "validation"
    batch_size: int = 64
    max_examples: int = 0
    ece_bins: int = metrics.DEFAULT_ECE_BINS
    thresholds: tuple[thresholds_lib.MetricThreshold, ...] = ()
    extra_names: tuple[str, ...] = ()
    extra_splits: tuple[str, ...] = ()

    def __post_init__(self):
        # Configs read back from JSON hold the thresholds as dicts.
        object.__setattr__(
            self,
            "thresholds",
            thresholds_lib.thresholds_from_json(self.thresholds),
        )
        if self.batch_size < 1 or self.ece_bins < 1:
            raise ValueError("batch_size and ece_bins must be positive.")
        names = [n for n in self.extra_names if n]
        if len(set(names)) != len(names) or any("/" in n for n in names):
            raise ValueError(
                f"extra_names must be distinct and free of '/': "
                f"{list(self.extra_names)}."
            )


@dataclasses.dataclass
class SetResult:
    """One model's results on one evaluation set."""

    metrics: dict[str, float]
    calibration: metrics.Calibration
    per_class: dict[str, dict[str, Any]] | None = None
    confusion: dict[tuple[int, int], int] | None = None


def make_predict_fn(model: tf_keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A compiled forward pass returning float32 logits."""

    # No autograph: the model branches on no tensor, and converting every
    # layer call makes tracing several times slower.
    @tf.function(reduce_retracing=True, autograph=False)
    def predict(images):
        return tf.cast(model(images, training=False), tf.float32)

    return predict


def collect(
    predict: Callable[[tf.Tensor], tf.Tensor], dataset: tf.data.Dataset
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the model over a dataset.

    Returns:
      (float32 logits `[N, C]`, int64 padded labels `[N, L]`, -1 = none).
    """
    logits, labels = [], []
    for images, batch_labels in dataset:
        logits.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
    if not logits:
        raise ValueError("The evaluation set is empty.")
    width = max(max(b.shape[1] for b in labels), 1)
    labels = [
        np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=-1)
        for b in labels
    ]
    return np.concatenate(logits), np.concatenate(labels)


def score(
    logits: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    multi_label_model: bool,
    ece_bins: int = metrics.DEFAULT_ECE_BINS,
) -> SetResult:
    """Computes the metrics of one set (see the module docstring).

    Args:
      logits: `[N, C]` model outputs.
      labels: `[N, L]` padded true labels.
      class_names: the model's class names.
      multi_label_model: sigmoid outputs rather than softmax.
      ece_bins: calibration bins.

    Returns:
      The `SetResult`.
    """
    num_classes = len(class_names)
    n_labels = (labels >= 0).sum(axis=1)
    out: dict[str, float] = {"num_examples": int(len(logits))}
    if multi_label_model:
        probs = metrics.sigmoid(logits)
        targets = metrics.multi_hot(labels, num_classes)
        mean_ap, _ = metrics.mean_average_precision(probs, targets)
        out["map"] = mean_ap
        out["precision_at_1"] = metrics.precision_at_1(probs, targets)
        out["loss"] = metrics.sigmoid_cross_entropy(logits, targets)
        cal = metrics.calibration(probs, targets, ece_bins)
        out["ece"] = cal.ece
        return SetResult(out, cal)
    probs = metrics.softmax(logits)
    predicted = probs.argmax(axis=1)
    if np.all(n_labels == 1):
        truth = labels[:, 0]
        out["top1"] = metrics.top_k_accuracy(probs, truth, 1)
        out["top5"] = metrics.top_k_accuracy(probs, truth, 5)
        out["loss"] = metrics.softmax_cross_entropy(logits, truth)
        cal = metrics.calibration(
            probs.max(axis=1), predicted == truth, ece_bins
        )
        out["ece"] = cal.ece
        accuracy, count = metrics.per_class_accuracy(
            predicted, truth, num_classes
        )
        per_class = {
            name: {
                "accuracy": None if np.isnan(a) else float(a),
                "count": int(c),
            }
            for name, a, c in zip(class_names, accuracy, count)
        }
        confusion = metrics.confusion_counts(predicted, truth)
        return SetResult(out, cal, per_class, confusion)
    # Label sets (ReaL): right when the prediction is any valid label;
    # images whose set is empty are left out, as in the ReaL paper.
    keep = n_labels > 0
    probs, labels, predicted = probs[keep], labels[keep], predicted[keep]
    out["num_examples"] = int(keep.sum())
    out["num_without_labels"] = int((~keep).sum())
    out["real_top1"] = metrics.top_k_accuracy(probs, labels, 1)
    out["real_top5"] = metrics.top_k_accuracy(probs, labels, 5)
    correct = (labels == predicted[:, None]).any(axis=1)
    cal = metrics.calibration(probs.max(axis=1), correct, ece_bins)
    out["ece"] = cal.ece
    return SetResult(out, cal)


class Evaluator(base.Component):
    """Evaluates a model (and its baseline) and decides the blessing."""

    SPEC = base.ComponentSpec(
        name="Evaluator",
        inputs={
            "examples": base.EXAMPLES,
            "model": base.MODEL,
            "baseline_model": base.MODEL,
            **{key: base.EXAMPLES for key in EXTRA_INPUTS},
        },
        outputs={
            "evaluation": base.MODEL_EVALUATION,
            "blessing": base.MODEL_BLESSING,
        },
        config_type=EvaluatorConfig,
        optional_inputs=frozenset({"baseline_model", *EXTRA_INPUTS}),
    )

    def run(
        self,
        inputs: Mapping[str, base.Artifact],
        outputs: Mapping[str, base.Artifact],
        config: EvaluatorConfig,
    ) -> None:
        sets = _eval_sets(inputs, config)
        report: dict[str, Any] = {"split": config.split}
        candidate = _evaluate_model(inputs["model"].uri, sets, config)
        report["model"] = inputs["model"].uri
        report.update(_model_report(candidate))
        baseline = None
        if "baseline_model" in inputs:
            baseline = _evaluate_model(
                inputs["baseline_model"].uri, sets, config
            )
            report["baseline_model"] = inputs["baseline_model"].uri
            report["baseline"] = _model_report(baseline)
        blessed, checks = thresholds_lib.validate(
            config.thresholds,
            _flat(candidate),
            None if baseline is None else _flat(baseline),
        )
        report["validation"] = {
            "blessed": blessed,
            "has_baseline": baseline is not None,
            "checks": [c.to_json() for c in checks],
        }
        evaluation = outputs["evaluation"]
        _write_plots(evaluation.uri, candidate, sets)
        evaluation_lib.write_report(evaluation, report)
        blessing_lib.write(outputs["blessing"], blessed, blessing_lib.MODEL)
        outputs["blessing"].properties.update(
            {
                "current_model": inputs["model"].uri,
                "baseline_model": (
                    inputs["baseline_model"].uri if baseline else ""
                ),
            }
        )
        for check in checks:
            logging.info("%s", check.message)
        logging.info("Blessed: %s", blessed)


_MAIN = evaluation_lib.MAIN_SET


@dataclasses.dataclass
class _EvalSet:
    name: str
    split: str
    files: list[str]
    data_labels: list[str] | None
    compression: str | None


def _eval_sets(
    inputs: Mapping[str, base.Artifact], config: EvaluatorConfig
) -> list[_EvalSet]:
    main = inputs["examples"]
    sets = [
        _EvalSet(
            _MAIN,
            config.split,
            examples_lib.split_files(main, config.split),
            examples_lib.read_labels(main),
            examples_lib.compression_of(main),
        )
    ]
    for i, key in enumerate(EXTRA_INPUTS):
        if key not in inputs:
            continue
        artifact = inputs[key]
        name = config.extra_names[i] if i < len(config.extra_names) else key
        split = config.extra_splits[i] if i < len(config.extra_splits) else ""
        if not split:
            names = examples_lib.split_names(artifact)
            split = names[0] if len(names) == 1 else config.split
        sets.append(
            _EvalSet(
                name,
                split,
                examples_lib.split_files(artifact, split),
                examples_lib.read_labels(artifact),
                examples_lib.compression_of(artifact),
            )
        )
    return sets


def _evaluate_model(
    uri: str, sets: list[_EvalSet], config: EvaluatorConfig
) -> dict[str, tuple[SetResult, list[str], bool]]:
    model, spec, labels = model_io.load_model(uri)
    predict = make_predict_fn(model)
    results = {}
    for s in sets:
        mapping = examples_lib.label_mapping(s.data_labels, labels)
        dataset = examples_io.eval_dataset(
            s.files,
            spec.image_size,
            config.batch_size,
            mapping,
            config.max_examples,
            s.compression,
        )
        try:
            logits, truth = collect(predict, dataset)
        except ValueError as e:
            raise ValueError(f"{s.name or 'main'} split {s.split}: {e}") from e
        if logits.shape[1] != len(labels):
            raise ValueError(
                f"{uri}: the model outputs {logits.shape[1]} classes but "
                f"has {len(labels)} labels."
            )
        results[s.name] = (
            score(logits, truth, labels, spec.multi_label, config.ece_bins),
            labels,
            spec.multi_label,
        )
        logging.info(
            "%s on %s/%s: %s",
            uri,
            s.name or "main",
            s.split,
            results[s.name][0].metrics,
        )
    return results


def _model_report(results) -> dict[str, Any]:
    main, _, multi_label = results[_MAIN]
    report = {
        "multi_label": multi_label,
        "metrics": main.metrics,
        "calibration": main.calibration.to_json(),
    }
    if main.per_class is not None:
        report["per_class"] = main.per_class
    report["extra_sets"] = {
        name: {"metrics": r.metrics, "calibration": r.calibration.to_json()}
        for name, (r, _, _) in results.items()
        if name != _MAIN
    }
    return report


def _flat(results) -> dict[str, float]:
    flat = {}
    for name, (r, _, _) in results.items():
        prefix = f"{name}/" if name else ""
        flat.update({prefix + k: v for k, v in r.metrics.items()})
    return flat


def _write_plots(uri: str, results, sets: list[_EvalSet]) -> None:
    split_of = {s.name: s.split for s in sets}
    for name, (r, labels, _) in results.items():
        title = f"{name or 'main'} / {split_of[name]}"
        if r.confusion is not None:
            plots.write_png(
                evaluation_lib.plot_path(
                    uri, evaluation_lib.CONFUSION_PNG, name
                ),
                plots.confusion_matrix_png(r.confusion, labels, title),
            )
        plots.write_png(
            evaluation_lib.plot_path(uri, evaluation_lib.RELIABILITY_PNG, name),
            plots.reliability_png(r.calibration, title),
        )
