"""Top-1 of a reduced-precision export against the float32 model.

A bfloat16 export (`serving_model.SERVING_PRECISIONS`) answers within a
looser tolerance than a float32 one, so infra-validation's per-request
comparison alone cannot tell whether the rounding costs accuracy. Here
both are scored on the same labelled images of an Examples split:

- the in-memory float32 Keras model on `components.preprocessing`'s eval
  preprocessing (what the Evaluator measured);
- the exported SavedModel, loaded back, through its `serving_default`
  signature on the encoded images (what a client gets).

Top-1 counts an image as correct when the highest-scoring class is one
of its labels: top-1 accuracy for single-label data, precision@1 for
multi-label data. Images without labels are left out. The data's label
ids are mapped onto the model's by class name when the Examples carry a
`labels.txt` that differs from the model's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from artifacts import examples as examples_lib
from components import base, preprocessing
from components.exporter import serving_model


@dataclasses.dataclass(frozen=True)
class Top1Check:
    """Both models' top-1 on the same images.

    Attributes:
      split: the Examples split the images came from.
      num_examples: labelled images scored.
      top1_float32: the float32 model's top-1, in [0, 1].
      top1_export: the export's top-1, in [0, 1].
      max_drop: how far below float32 the export may be.
    """

    split: str
    num_examples: int
    top1_float32: float
    top1_export: float
    max_drop: float

    @property
    def drop(self) -> float:
        """float32's top-1 minus the export's (positive: the export lost)."""
        return self.top1_float32 - self.top1_export

    @property
    def passed(self) -> bool:
        return self.num_examples > 0 and self.drop <= self.max_drop

    def reason(self, precision: str) -> str:
        """A sentence naming both figures, for the blessing's reason."""
        if not self.num_examples:
            return (
                f"No labelled images in split {self.split!r} to compare the "
                f"{precision} export's top-1 with float32's."
            )
        verdict = "within" if self.passed else "more than"
        return (
            f"top-1 on {self.num_examples} images of split {self.split!r}: "
            f"{precision} export {self.top1_export:.4f}, float32 model "
            f"{self.top1_float32:.4f} (drop {self.drop:.4f}, {verdict} "
            f"the allowed {self.max_drop:g})."
        )


def choose_split(examples: base.Artifact, wanted: str) -> str:
    """`wanted` when the artifact has it, else its first split."""
    splits = examples_lib.split_names(examples)
    if wanted in splits or not splits:
        return wanted
    return splits[0]


def _batches(
    examples: base.Artifact,
    split: str,
    image_size: int,
    max_examples: int,
    batch_size: int,
) -> tf.data.Dataset:
    """(encoded [B], preprocessed [B, S, S, 3], labels [B, L] padded -1)."""
    files = examples_lib.split_files(examples, split)
    records = examples_lib.records(
        files, examples_lib.compression_of(examples)
    ).take(max_examples)

    def prepare(serialized):
        parsed = examples_lib.parse(serialized)
        image = preprocessing.preprocess_for_eval(parsed["image"], image_size)
        return parsed["image"], image, parsed["labels"]

    return records.map(prepare).padded_batch(
        batch_size,
        padded_shapes=([], [image_size, image_size, 3], [None]),
        padding_values=(
            tf.constant(b""),
            tf.constant(0.0),
            tf.constant(-1, tf.int64),
        ),
    )


def top1_check(
    export_dir: str,
    model: tf_keras.Model,
    image_size: int,
    model_labels: Sequence[str],
    examples: base.Artifact,
    split: str,
    max_examples: int,
    max_drop: float,
    batch_size: int = 32,
) -> Top1Check:
    """Scores the float32 model and the export on one split's images.

    Args:
      export_dir: the exported SavedModel.
      model: the float32 Keras model it was exported from.
      image_size: the model's resolution.
      model_labels: the model's class names.
      examples: an Examples artifact with labels.
      split: the split to read (see `choose_split`).
      max_examples: read at most this many records.
      max_drop: the allowed drop of the export's top-1 below float32's.
      batch_size: images per call; at most the export's max_batch_size.

    Returns:
      The figures; `passed` says whether the drop is allowed.

    Raises:
      ValueError: the examples hold classes the model does not know.
      ArtifactError: the split has no files.
    """
    mapping = examples_lib.label_mapping(
        examples_lib.read_labels(examples), model_labels
    )
    if mapping is not None:
        mapping = np.array(mapping, np.int64)
    serve = tf.saved_model.load(export_dir).signatures[
        serving_model.PREDICT_SIGNATURE
    ]
    predict = tf.function(
        lambda images: model(images, training=False), autograph=False
    )
    correct_float32 = correct_export = scored = 0
    batches = _batches(examples, split, image_size, max_examples, batch_size)
    for encoded, images, labels in batches:
        labels = labels.numpy()
        if mapping is not None:
            labels = np.where(labels >= 0, mapping[np.maximum(labels, 0)], -1)
        logits = predict(images).numpy()
        probabilities = serve(**{serving_model.IMAGE_BYTES_KEY: encoded})[
            "probabilities"
        ].numpy()
        labelled = (labels >= 0).any(axis=1)
        correct_float32 += _hits(logits, labels, labelled)
        correct_export += _hits(probabilities, labels, labelled)
        scored += int(labelled.sum())
    return Top1Check(
        split=split,
        num_examples=scored,
        top1_float32=correct_float32 / scored if scored else float("nan"),
        top1_export=correct_export / scored if scored else float("nan"),
        max_drop=max_drop,
    )


def _hits(scores: np.ndarray, labels: np.ndarray, labelled: np.ndarray) -> int:
    """Labelled rows whose highest score is one of their labels."""
    best = scores.argmax(axis=1)
    return int(((labels == best[:, None]).any(axis=1) & labelled).sum())
