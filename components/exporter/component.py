"""The Exporter component: a trained Model to a validated serving model.

Inputs: `model` (Model: spec, labels and serving weights, which are the EMA
weights when the trainer kept an EMA), optional `blessing` (the Evaluator's
ModelBlessing) and optional `examples` (Examples whose images make the
warmup requests more representative; synthetic photo-like JPEGs otherwise).

Outputs:
  model (Model): a new Model artifact, not the input one rewritten, so the
    trainer's artifact stays immutable (caching and lineage rely on that).
    It holds TFX's `Format-Serving/` SavedModel (see `serving_model` for
    the signature contract), plus copies of `model_spec.json`, `labels.txt`
    and `weights/`, so it is also a complete Model artifact (the Evaluator
    can use a pushed model as its baseline).
  infra_blessing (ModelBlessing): `INFRA_BLESSED` or `INFRA_NOT_BLESSED`,
    property `blessed` 1/0 and a `reason`, after infra-validation in a
    fresh serving process (`infra_validation`).

`serving_precision` chooses what the exported graph computes in: float32,
or bfloat16 (`serving_model.load_serving_model`) for CPUs and
accelerators with native bfloat16, with the same signatures and float32
outputs. A bfloat16 export is infra-validated against the float32 model
with `infra_atol_bfloat16`, and its top-1 on the `examples`' evaluation
split must be within `max_top1_drop` of the float32 model's
(`precision_check`; without `examples` it is not infra-blessed); both
figures are recorded in the infra_blessing's properties.

A model the Evaluator did not bless is not exported (with
`require_blessing`, the default): the outputs say so and nothing is
served.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import tensorflow as tf
import tf_keras
from absl import logging

from artifacts import blessing as blessing_lib
from artifacts import examples as examples_lib
from artifacts import model as model_io
from artifacts import model_store
from components import base
from components.exporter import (
    image_limits,
    infra_validation,
    precision_check,
    serving_model,
)


@dataclasses.dataclass(frozen=True)
class ExporterConfig:
    """The Exporter's execution properties.

    Attributes:
      model_name: the serving name used in warmup requests and validation.
      top_k: classes in the top-k outputs (capped at the class count).
      warmup_batch_sizes: one warmup request per signature and size.
      warmup_split: the `examples` split to take warmup images from (the
        first split when it has no such split).
      require_blessing: refuse a model the Evaluator did not bless.
      infra_validate: run infra-validation (else INFRA_NOT_BLESSED).
      infra_timeout_seconds: for the server to start, load and warm up.
      infra_atol: score tolerance against the in-memory model.
      max_image_pixels: the exported signatures refuse an image whose
        header declares more pixels (height * width), before decoding.
      max_batch_size: they refuse a request of more inputs than this.
      serving_precision: what the exported model computes in, one of
        `serving_model.SERVING_PRECISIONS` ("float32", "bfloat16").
      infra_atol_bfloat16: the score tolerance of a bfloat16 export
        against the float32 model (bfloat16 keeps 8 significant bits, so
        probabilities move by up to a few 1e-2 after a deep network).
      precision_split: the `examples` split a bfloat16 export's top-1 is
        checked on (the first split when it has no such split).
      precision_check_examples: images of that split scored, at most.
      max_top1_drop: a bfloat16 export whose top-1 is lower than the
        float32 model's by more than this (0.005: half a point) is not
        infra-blessed.
    """

    model_name: str = "coatnet"
    top_k: int = 5
    warmup_batch_sizes: tuple[int, ...] = (1, 8)
    warmup_split: str = "validation"
    require_blessing: bool = True
    infra_validate: bool = True
    infra_timeout_seconds: float = 300.0
    infra_atol: float = infra_validation.DEFAULT_ATOL
    max_image_pixels: int = image_limits.DEFAULT_MAX_IMAGE_PIXELS
    max_batch_size: int = image_limits.DEFAULT_MAX_BATCH_SIZE
    serving_precision: str = "float32"
    infra_atol_bfloat16: float = infra_validation.DEFAULT_BFLOAT16_ATOL
    precision_split: str = "validation"
    precision_check_examples: int = 512
    max_top1_drop: float = 0.005

    def __post_init__(self):
        if self.serving_precision not in serving_model.SERVING_PRECISIONS:
            raise ValueError(
                f"serving_precision={self.serving_precision!r}; expected one "
                f"of {list(serving_model.SERVING_PRECISIONS)} (bfloat16 pays "
                "only on hardware with native bfloat16 math)."
            )
        if self.precision_check_examples < 1:
            raise ValueError(
                "precision_check_examples must be at least 1, got "
                f"{self.precision_check_examples}."
            )
        if not self.infra_atol > 0 or not self.infra_atol_bfloat16 > 0:
            raise ValueError(
                "infra_atol and infra_atol_bfloat16 must be positive, got "
                f"{self.infra_atol} and {self.infra_atol_bfloat16}."
            )
        if not self.warmup_batch_sizes or min(self.warmup_batch_sizes) < 1:
            raise ValueError("warmup_batch_sizes must be positive sizes.")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1.")
        if self.max_image_pixels < 1 or self.max_batch_size < 1:
            raise ValueError(
                "max_image_pixels and max_batch_size must be positive, got "
                f"{self.max_image_pixels} and {self.max_batch_size}."
            )
        if max(self.warmup_batch_sizes) > self.max_batch_size:
            raise ValueError(
                f"warmup_batch_sizes {self.warmup_batch_sizes} exceed "
                f"max_batch_size {self.max_batch_size}."
            )


class Exporter(base.Component):
    """Exports, writes warmup requests, infra-validates."""

    SPEC = base.ComponentSpec(
        name="Exporter",
        inputs={
            "model": base.MODEL,
            "blessing": base.MODEL_BLESSING,
            "examples": base.EXAMPLES,
        },
        outputs={
            "model": base.MODEL,
            "infra_blessing": base.MODEL_BLESSING,
        },
        config_type=ExporterConfig,
        optional_inputs=frozenset({"blessing", "examples"}),
    )

    def run(
        self,
        inputs: Mapping[str, base.Artifact],
        outputs: Mapping[str, base.Artifact],
        config: ExporterConfig,
    ) -> None:
        exported, infra = outputs["model"], outputs["infra_blessing"]
        blessing = inputs.get("blessing")
        if (
            config.require_blessing
            and blessing is not None
            and not blessing_lib.is_blessed(blessing, blessing_lib.MODEL)
        ):
            exported.properties["exported"] = 0
            # Lets the Pusher match this artifact to its blessing.
            exported.properties["source_model"] = inputs["model"].uri
            infra_validation.write_infra_blessing(
                infra, False, f"Not exported: {blessing.uri} is not blessed."
            )
            return
        source = inputs["model"]
        model, spec, labels = model_io.load_model(source.uri)
        export_dir = export(
            source.uri,
            exported.uri,
            model,
            spec,
            config,
            inputs.get("examples"),
        )
        exported.properties.update(
            {
                "exported": 1,
                "serving_precision": config.serving_precision,
                "serving_dir": export_dir,
                "signatures": ",".join(serving_model.SIGNATURES),
                "source_model": source.uri,
                "variant": spec.variant,
                "image_size": spec.image_size,
                "num_classes": spec.num_classes,
                "multi_label": int(spec.multi_label),
                "max_image_pixels": config.max_image_pixels,
                "max_batch_size": config.max_batch_size,
            }
        )
        if not config.infra_validate:
            infra_validation.write_infra_blessing(
                infra, False, "Infra-validation disabled."
            )
            return
        float32 = config.serving_precision == "float32"
        examples = inputs.get("examples")
        if not float32 and examples is None:
            # Its accuracy is unknown: not served until it is checked.
            infra_validation.write_infra_blessing(
                infra,
                False,
                f"A {config.serving_precision} export is infra-blessed only "
                "after its top-1 is checked against float32 on labelled "
                "images: give the Exporter `examples` (--examples), or "
                "export in float32.",
            )
            return
        result = infra_validation.validate(
            export_dir,
            model,
            spec,
            labels,
            config.model_name,
            config.top_k,
            config.infra_atol if float32 else config.infra_atol_bfloat16,
            config.infra_timeout_seconds,
        )
        blessed, reason = result.blessed, result.reason
        infra.properties.update(
            {
                "num_requests": result.num_requests,
                "max_abs_diff": result.max_abs_diff,
                "model": exported.uri,
                "serving_precision": config.serving_precision,
            }
        )
        if blessed and not float32:
            blessed, why = self._check_top1(
                export_dir, model, spec, labels, examples, config, infra
            )
            reason = f"{reason} {why}"
        infra_validation.write_infra_blessing(infra, blessed, reason)

    @staticmethod
    def _check_top1(
        export_dir: str,
        model: tf_keras.Model,
        spec: model_io.ModelSpec,
        labels: list[str],
        examples: base.Artifact,
        config: ExporterConfig,
        infra: base.Artifact,
    ) -> tuple[bool, str]:
        """The reduced-precision export's top-1 against float32's."""
        split = precision_check.choose_split(examples, config.precision_split)
        try:
            check = precision_check.top1_check(
                export_dir,
                model,
                spec.image_size,
                labels,
                examples,
                split,
                config.precision_check_examples,
                config.max_top1_drop,
                batch_size=min(32, config.max_batch_size),
            )
        except (ValueError, base.ArtifactError) as e:
            return False, f"Cannot check the export's top-1: {e}"
        infra.properties.update(
            {
                "top1_float32": check.top1_float32,
                "top1_export": check.top1_export,
                "top1_examples": check.num_examples,
                "top1_split": check.split,
                "max_top1_drop": check.max_drop,
            }
        )
        return check.passed, check.reason(config.serving_precision)


def export(
    source_uri: str,
    output_uri: str,
    model: tf_keras.Model,
    spec: model_io.ModelSpec,
    config: ExporterConfig,
    examples: base.Artifact | None = None,
) -> str:
    """Writes the serving SavedModel and the Model files under `output_uri`.

    Args:
      source_uri: the trained Model artifact (for labels and weights).
      output_uri: the exported Model artifact's root.
      model: the loaded float32 model, which a float32 export freezes for
        inference (`serving_model.ServingModule`). For another serving
        precision the model is rebuilt in that precision from
        `source_uri`'s weights.
      spec: its spec.
      config: the exporter config.
      examples: optional Examples for warmup images.

    Returns:
      The SavedModel directory, `<output_uri>/Format-Serving`.
    """
    model_io.copy_model(source_uri, output_uri)
    export_dir = model_io.serving_dir(output_uri)
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    if config.serving_precision != "float32":
        model = serving_model.load_serving_model(
            source_uri, config.serving_precision
        )
    module = serving_model.ServingModule(
        model,
        spec,
        os.path.join(output_uri, model_io.LABELS_FILE),
        config.top_k,
        config.max_image_pixels,
        config.max_batch_size,
    )
    serving_model.save(module, export_dir)
    count = max(config.warmup_batch_sizes)
    images = []
    if examples is not None:
        splits = examples_lib.split_names(examples)
        split = config.warmup_split if config.warmup_split in splits else ""
        split = split or (splits[0] if splits else config.warmup_split)
        files = examples_lib.split_files(examples, split)
        images = examples_lib.encoded_images(
            files, count, examples_lib.compression_of(examples)
        )
    if not images:
        images = serving_model.synthetic_images(spec.image_size, count)
    logs = serving_model.warmup_logs(
        config.model_name, images, spec.image_size, config.warmup_batch_sizes
    )
    model_store.write_warmup(export_dir, logs)
    logging.info(
        "Exported %s to %s (%s) with %d warmup requests.",
        source_uri,
        export_dir,
        config.serving_precision,
        len(logs),
    )
    return export_dir
