"""Initial weights from another model: finetune and warm start.

The source is a Model artifact (the Trainer's `base_model` input, whose
`weights/` are the served, EMA weights) or any checkpoint holding the model
under `model` (`finetune.init_checkpoint`: a prefix, a checkpoint folder, or
a Model artifact's root). `coatnet_tf.restore_from_checkpoint` does the
restoring: every weight as stored, the relative bias tables resized
bilinearly to the new resolution's token grids, the classifier re-created
when the class count differs.

The classifier (`finetune.head_rows`): when the new label names are all
among the source's (the 1K synsets inside 21K), "auto" copies the matching
rows, one per new class, so finetuning starts from the pretrained decision
for each class; otherwise it is new. Labels come from `labels.txt` in the
Model artifact the checkpoint belongs to.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf
import tf_keras
from absl import logging

from artifacts import model as model_io
from components import base
from components.trainer import config as config_lib


def source(
    base_model: base.Artifact | None, config: config_lib.FinetuneConfig
) -> tuple[str, list[str] | None] | None:
    """Where the initial weights come from.

    Args:
      base_model: the Trainer's optional `base_model` input (wins).
      config: the finetune config.

    Returns:
      (checkpoint path, source label names or None when unknown), or None
      to start from random weights.
    """
    if base_model is not None:
        path = base_model.uri
    elif config.init_checkpoint:
        path = config.init_checkpoint
    else:
        return None
    if tf.io.gfile.exists(os.path.join(path, model_io.MODEL_SPEC_FILE)):
        return (
            os.path.join(path, model_io.WEIGHTS_DIR, model_io.WEIGHTS_PREFIX),
            _labels_near(path),
        )
    return path, _labels_near(path)


def head_rows(
    labels: Sequence[str], source_labels: Sequence[str] | None, mode: str
) -> list[int] | None:
    """Source classifier rows for the new classes, or None for a new head.

    Args:
      labels: the new label space, in class-index order.
      source_labels: the pretrained model's labels (None when unknown).
      mode: "auto", "match" or "none" (see `FinetuneConfig.head_rows`).

    Returns:
      One source index per new class, or None.

    Raises:
      ValueError: mode "match" and a label is missing or labels unknown.
    """
    if mode == "none":
        return None
    if source_labels is None:
        if mode == "match":
            raise ValueError(
                "finetune.head_rows=match needs the base model's labels.txt."
            )
        return None
    index = {name: i for i, name in enumerate(source_labels)}
    missing = [name for name in labels if name not in index]
    if missing:
        if mode == "match":
            raise ValueError(
                f"finetune.head_rows=match: {len(missing)} labels are not "
                f"among the base model's, e.g. {missing[:5]}."
            )
        return None
    return [index[name] for name in labels]


def restore(
    model: tf_keras.Model,
    path: str,
    labels: Sequence[str],
    source_labels: Sequence[str] | None,
    mode: str,
):
    """Restores `model` from `path` for the label space `labels`.

    Args:
      model: the built model (its variables created).
      path: the source checkpoint.
      labels: the new label names.
      source_labels: the source's label names, None when unknown.
      mode: the `head_rows` mode.

    Returns:
      coatnet_tf's `RestoreReport`.
    """
    import coatnet_tf  # The model library; heavy, so imported late.

    rows = head_rows(labels, source_labels, mode)
    report = coatnet_tf.restore_from_checkpoint(model, path, head_rows=rows)
    classifier = model.classifier
    same_space = source_labels is None or list(source_labels) == list(labels)
    if (
        rows is None
        and not same_space
        and mode == "auto"
        and classifier is not None
        and not report.reinitialized
    ):
        # Same class count, different classes: a restored head would score
        # the wrong labels; it starts afresh instead.
        logging.warning(
            "Classifier re-initialized: the labels differ from %s's.", path
        )
        for var, init in (
            (classifier.kernel, classifier.kernel_initializer),
            (classifier.bias, classifier.bias_initializer),
        ):
            var.assign(init(var.shape, var.dtype))
        report.reinitialized.extend(
            [classifier.kernel.name, classifier.bias.name]
        )
    logging.info("Finetune init: %s", report.summary())
    return report


def _labels_near(path: str) -> list[str] | None:
    """labels.txt of the Model artifact `path` is, or is inside of."""
    candidates = [path, os.path.dirname(path)]
    candidates.append(os.path.dirname(candidates[1]))
    for folder in candidates:
        labels = os.path.join(folder, model_io.LABELS_FILE)
        if folder and tf.io.gfile.exists(labels):
            return model_io.read_labels(labels)
    return None
