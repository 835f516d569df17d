"""The Model artifact: how a trained CoAtNet is stored and loaded again.

Layout under a Model artifact's URI (the Trainer writes it; the Evaluator,
Exporter and the finetune/retrain pipelines read it):

  model_spec.json    `ModelSpec`: variant, classes, resolution, overrides,
                     single- or multi-label, preprocessing.
  labels.txt         class names, one per line, in class-index order.
  checkpoints/       the trainer's `tf.train.CheckpointManager` directory
                     (model, optimizer, EMA, step): resume state.
  weights/           a model-only `tf.train.Checkpoint(model=...)` of the
                     weights to serve: the EMA weights when the trainer kept
                     an EMA, else the final weights.
  Format-Serving/    the SavedModel, once the Exporter has run on it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from artifacts import core, model_store

MODEL_SPEC_FILE = "model_spec.json"
LABELS_FILE = "labels.txt"
CHECKPOINT_DIR = "checkpoints"
WEIGHTS_DIR = "weights"
WEIGHTS_PREFIX = "model"
SERVING_DIR = "Format-Serving"
# The Trainer's TensorBoard summaries, `<model>/logs/{train,validation}`.
LOGS_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the model and its input and output conventions.

    Attributes:
      variant: a `coatnet_tf` variant name, e.g. "coatnet-0".
      num_classes: the classifier's width.
      image_size: the input resolution the weights were trained at.
      multi_label: sigmoid outputs (21K, JFT) rather than softmax.
      overrides: keyword overrides passed to `coatnet_tf.create_model`.
    """

    variant: str
    num_classes: int
    image_size: int
    multi_label: bool = False
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


def build_model(spec: ModelSpec) -> tf.keras.Model:
    """Creates the model of `spec` and builds its variables.

    Args:
      spec: the model spec.

    Returns:
      A built `coatnet_tf.CoAtNet` (variables created, random weights).
    """
    import coatnet_tf  # Deferred: keeps this module light for readers.

    model = coatnet_tf.create_model(
        spec.variant,
        num_classes=spec.num_classes,
        image_size=spec.image_size,
        **spec.overrides,
    )
    model(tf.zeros([1, spec.image_size, spec.image_size, 3]), training=False)
    return model


def write_model(
    uri: str,
    model: tf.keras.Model,
    spec: ModelSpec,
    labels: Sequence[str],
) -> str:
    """Writes the spec, the labels and the serving weights of a model.

    Args:
      uri: the Model artifact's root.
      model: the model whose current weights are the ones to serve (swap
        in the EMA weights before calling, when there is an EMA).
      spec: the model's spec.
      labels: class names in index order; `len(labels) == num_classes`.

    Returns:
      The checkpoint path of the written weights.

    Raises:
      ValueError: the label count does not match the classifier.
    """
    if len(labels) != spec.num_classes:
        raise ValueError(
            f"{len(labels)} labels for a {spec.num_classes}-class model."
        )
    core.write_json(os.path.join(uri, MODEL_SPEC_FILE), _spec_json(spec))
    write_labels(os.path.join(uri, LABELS_FILE), labels)
    weights_dir = os.path.join(uri, WEIGHTS_DIR)
    if tf.io.gfile.exists(weights_dir):
        tf.io.gfile.rmtree(weights_dir)
    return tf.train.Checkpoint(model=model).write(
        os.path.join(weights_dir, WEIGHTS_PREFIX)
    )


def read_spec(uri: str) -> ModelSpec:
    """Reads `model_spec.json` from a Model artifact's root."""
    path = os.path.join(uri, MODEL_SPEC_FILE)
    if not tf.io.gfile.exists(path):
        raise core.ArtifactError(
            f"{uri} has no {MODEL_SPEC_FILE}: not a trained Model artifact."
        )
    return core.config_from_json(ModelSpec, core.read_json(path))


def load_model(uri: str) -> tuple[tf.keras.Model, ModelSpec, list[str]]:
    """Rebuilds the model stored in a Model artifact with its weights.

    Args:
      uri: the Model artifact's root.

    Returns:
      (model, spec, labels).

    Raises:
      ArtifactError: the artifact has no spec or no weights.
    """
    spec = read_spec(uri)
    labels = read_labels(os.path.join(uri, LABELS_FILE))
    model = build_model(spec)
    weights = weights_path(uri)
    if not tf.io.gfile.exists(weights + ".index"):
        raise core.ArtifactError(
            f"{uri} has no {WEIGHTS_DIR}/{WEIGHTS_PREFIX}: the trainer did "
            "not finish writing this model."
        )
    tf.train.Checkpoint(model=model).read(weights).assert_consumed()
    return model, spec, labels


def copy_model(source_uri: str, target_uri: str) -> None:
    """Copies a Model artifact's spec, labels and serving weights.

    Args:
      source_uri: the Model artifact to copy from.
      target_uri: the Model artifact to copy to; its old weights, if any,
        are replaced.
    """
    tf.io.gfile.makedirs(target_uri)
    for name in (MODEL_SPEC_FILE, LABELS_FILE):
        tf.io.gfile.copy(
            os.path.join(source_uri, name),
            os.path.join(target_uri, name),
            overwrite=True,
        )
    weights = os.path.join(target_uri, WEIGHTS_DIR)
    if tf.io.gfile.exists(weights):
        tf.io.gfile.rmtree(weights)
    model_store.copy_tree(
        os.path.join(source_uri, WEIGHTS_DIR), weights, last=""
    )


def weights_path(uri: str) -> str:
    """The checkpoint prefix of a Model artifact's serving weights."""
    return os.path.join(uri, WEIGHTS_DIR, WEIGHTS_PREFIX)


def serving_dir(uri: str) -> str:
    """The SavedModel directory of an exported Model artifact."""
    return os.path.join(uri, SERVING_DIR)


def write_labels(path: str, labels: Sequence[str]) -> None:
    """Writes class names one per line; names may not hold newlines."""
    for name in labels:
        if "\n" in name or "\r" in name:
            raise ValueError(f"Label {name!r} holds a line break.")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(f"{name}\n" for name in labels))


def read_labels(path: str) -> list[str]:
    """Reads a labels file written by `write_labels`."""
    if not tf.io.gfile.exists(path):
        raise core.ArtifactError(f"Label file {path} is missing.")
    with tf.io.gfile.GFile(path, "r") as f:
        return [line.rstrip("\n") for line in f]


def _spec_json(spec: ModelSpec) -> dict[str, Any]:
    return core.config_to_json(spec)
