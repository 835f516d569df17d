"""The Trainer as a `base.Component`: Examples (+ a base Model) in, Model out.

Inputs: `examples` (Examples), optional `base_model` (Model) to finetune or
warm-start from. Output: `model` (Model): `model_spec.json`, `labels.txt`,
`checkpoints/` (resume state), `weights/` (the serving weights: the EMA
when kept) and `logs/` (TensorBoard), with the run's figures in the
artifact's properties.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from components import base
from components.trainer import config as config_lib
from components.trainer import reporting, train_lib


class Trainer(base.Component):
    """Trains a CoAtNet on an Examples artifact (see train_lib)."""

    SPEC = base.ComponentSpec(
        name="Trainer",
        inputs={"examples": base.EXAMPLES, "base_model": base.MODEL},
        outputs={"model": base.MODEL},
        config_type=config_lib.TrainerConfig,
        optional_inputs=frozenset({"base_model"}),
    )

    def __init__(self, strategy: tf.distribute.Strategy | None = None):
        """Creates the component.

        Args:
          strategy: the strategy to train under; None creates the one the
            config names when `run` starts.
        """
        self.strategy = strategy

    def run(
        self,
        inputs: Mapping[str, base.Artifact],
        outputs: Mapping[str, base.Artifact],
        config: config_lib.TrainerConfig,
    ) -> None:
        """Trains, writes the Model artifact and records its properties."""
        model = outputs["model"]
        result, trainer = train_lib.run(
            config,
            inputs["examples"],
            model.uri,
            base_model=inputs.get("base_model"),
            strategy=self.strategy,
        )
        model.properties.update(result_properties(result, trainer))


def result_properties(
    result: reporting.TrainResult, trainer: train_lib.Trainer
) -> dict[str, Any]:
    """The Model artifact's properties after a run."""
    last = result.history[-1] if result.history else {}
    return {
        "variant": trainer.spec.variant,
        "image_size": trainer.spec.image_size,
        "num_classes": trainer.spec.num_classes,
        "multi_label": trainer.spec.multi_label,
        "step": result.step,
        "start_step": result.start_step,
        "ema": trainer.config.optimizer.ema_decay > 0,
        "init": result.init,
        "train_loss": last.get("loss"),
        "train_accuracy": last.get("accuracy"),
        "eval": result.eval_metrics,
        "examples": trainer.info.uri,
    }
