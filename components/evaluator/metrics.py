"""Classification metrics the Evaluator reports, on NumPy arrays.

Single-label (softmax) models: top-1 and top-5 accuracy, softmax
cross-entropy, per-class accuracy, expected calibration error (ECE) and the
sparse confusion counts. Multi-label (sigmoid) models: mean average precision
(mAP) over classes and precision@1. A single-label model scored against sets
of valid labels (ImageNet-ReaL) gets "ReaL" accuracy: a prediction is right
when it is any one of the image's labels.

Labels come as a padded int matrix `[N, L]` with -1 for padding, so one
layout serves single-label (L = 1) and multi-label data alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Guo et al. 2017 ("On Calibration of Modern Neural Networks") use 15 bins.
DEFAULT_ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row max is subtracted)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64."""
    z = np.asarray(logits, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # Overflow-free form.


def first_labels(labels: np.ndarray) -> np.ndarray:
    """The first label of each row of a padded `[N, L]` label matrix."""
    labels = np.asarray(labels)
    return labels[:, 0] if labels.ndim == 2 else labels


def multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Padded `[N, L]` labels (-1 = none) to a bool `[N, num_classes]`."""
    labels = np.asarray(labels).reshape(len(labels), -1)
    out = np.zeros((len(labels), num_classes), bool)
    rows, cols = np.nonzero(labels >= 0)
    out[rows, labels[rows, cols]] = True
    return out


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k highest scores per row, best first, `[N, k]`.

    Ties are broken toward the lower class id, as `tf.math.top_k` does.
    """
    k = min(k, scores.shape[-1])
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores.

    Args:
      scores: `[N, C]` probabilities or logits.
      labels: `[N]` class ids, or a padded `[N, L]` matrix: a row counts
        as right when any of its labels is in the top k (ReaL-style).

    Returns:
      The accuracy in [0, 1] (NaN when N is 0).
    """
    labels = np.asarray(labels).reshape(len(scores), -1)
    if len(scores) == 0:
        return float("nan")
    top = top_k_ids(scores, k)
    hit = (top[:, :, None] == labels[:, None, :]) & (labels[:, None, :] >= 0)
    return float(hit.any(axis=(1, 2)).mean())


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log softmax(logits)[label] over rows, computed stably."""
    z = np.asarray(logits, np.float64)
    labels = first_labels(labels)
    m = z.max(axis=-1)
    log_z = m + np.log(np.exp(z - m[:, None]).sum(axis=-1))
    return float(np.mean(log_z - z[np.arange(len(z)), labels]))


def sigmoid_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sigmoid cross-entropy summed over classes, averaged over rows.

    The sum over classes is big_vision's `sigmoid_xent` convention for
    21K/JFT training, so the number compares with the trainer's loss.

    Args:
      logits: `[N, C]`.
      targets: `[N, C]` in {0, 1} (or soft scores in [0, 1]).

    Returns:
      The loss.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(targets, np.float64)
    # -y log s(z) - (1-y) log(1-s(z)) == max(z,0) - z*y + log(1+exp(-|z|)).
    per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    return float(per.sum(axis=-1).mean())


def per_class_accuracy(
    predictions: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and support of each true class.

    Args:
      predictions: `[N]` predicted class ids.
      labels: `[N]` true class ids.
      num_classes: C.

    Returns:
      (accuracy `[C]`, NaN where a class has no example; count `[C]`).
    """
    labels = first_labels(labels)
    count = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(
        labels, weights=(predictions == labels), minlength=num_classes
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
    return accuracy, count


def confusion_counts(
    predictions: np.ndarray, labels: np.ndarray
) -> dict[tuple[int, int], int]:
    """Sparse confusion matrix: (true id, predicted id) -> count.

    Sparse because a dense 21K x 21K matrix would not fit in memory.
    """
    pairs = np.stack([first_labels(labels), predictions], axis=1)
    if len(pairs) == 0:
        return {}
    keys, counts = np.unique(pairs, axis=0, return_counts=True)
    return {(int(t), int(p)): int(c) for (t, p), c in zip(keys, counts)}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Reliability-diagram bins and the expected calibration error.

    Attributes:
      ece: sum over bins of (bin count / N) * |accuracy - confidence|.
      edges: `[B + 1]` bin edges on [0, 1].
      accuracy: `[B]` mean correctness per bin (NaN when empty).
      confidence: `[B]` mean confidence per bin (NaN when empty).
      count: `[B]` predictions per bin.
    """

    ece: float
    edges: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    count: np.ndarray

    def to_json(self) -> dict:
        return {
            "ece": self.ece,
            "bin_edges": [float(x) for x in self.edges],
            "bin_accuracy": _nan_to_none(self.accuracy),
            "bin_confidence": _nan_to_none(self.confidence),
            "bin_count": [int(x) for x in self.count],
        }


def calibration(
    confidence: np.ndarray,
    correct: np.ndarray,
    num_bins: int = DEFAULT_ECE_BINS,
) -> Calibration:
    """Equal-width binned calibration of confidences against outcomes.

    Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0
    goes to the first bin.

    Args:
      confidence: `[M]` predicted probabilities of the events.
      correct: `[M]` whether each event happened (bool or 0/1).
      num_bins: B.

    Returns:
      The `Calibration`.
    """
    conf = np.asarray(confidence, np.float64).reshape(-1)
    hit = np.asarray(correct, np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, None)
    index = np.minimum(index, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    sum_conf = np.bincount(index, weights=conf, minlength=num_bins)
    sum_hit = np.bincount(index, weights=hit, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / count, np.nan)
        mean_hit = np.where(count > 0, sum_hit / count, np.nan)
    total = max(int(count.sum()), 1)
    ece = float(np.abs(sum_hit - sum_conf).sum() / total)
    return Calibration(ece, edges, mean_hit, mean_conf, count)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve of one class (as sklearn).

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, so
    tied scores form one step (they cannot be ordered).

    Args:
      scores: `[N]` scores for the class.
      positives: `[N]` bool, whether each row has the class.

    Returns:
      AP in [0, 1]; NaN when the class has no positive.
    """
    scores = np.asarray(scores, np.float64)
    positives = np.asarray(positives, bool)
    total = positives.sum()
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positives[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # The last index of each run of equal scores is a threshold.
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / total
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(
    scores: np.ndarray, targets: np.ndarray
) -> tuple[float, np.ndarray]:
    """mAP over the classes that have at least one positive.

    Args:
      scores: `[N, C]`.
      targets: `[N, C]` bool.

    Returns:
      (mAP, per-class AP `[C]` with NaN for classes without positives).
    """
    ap = np.array(
        [
            average_precision(scores[:, c], targets[:, c])
            for c in range(scores.shape[1])
        ]
    )
    valid = ~np.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else float("nan")), ap


def precision_at_1(scores: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows whose highest-scoring class is a positive."""
    if len(scores) == 0:
        return float("nan")
    top = top_k_ids(scores, 1)[:, 0]
    return float(targets[np.arange(len(scores)), top].mean())


def _nan_to_none(values: np.ndarray) -> list:
    """JSON has no NaN: missing values become null."""
    return [None if np.isnan(v) else float(v) for v in values]
