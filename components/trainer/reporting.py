"""What a training run reports: its result, progress lines and summaries.

The console gets one line per log point with the step, loss, accuracy,
learning rate, images/s, seconds per step and the ETA, and one per
evaluation; `<model_dir>/logs/{train,validation}` get the same figures as
TensorBoard scalars. Only the chief writes summaries (other workers get
no-op writers), while every worker computes the figures: reading a
distributed metric all-reduces it.
"""

from __future__ import annotations

import dataclasses
import os
import time

import tensorflow as tf
from absl import logging

from artifacts import model as model_io


@dataclasses.dataclass
class TrainResult:
    """What a training run did.

    Attributes:
      step: the step the weights are at.
      start_step: the step the run started (or resumed) at.
      history: one record per logging interval (step, loss, accuracy,
        learning_rate, grad_norm, images_per_sec, step_time).
      eval_metrics: the final evaluation ({} when there is no eval split).
      init: how the weights were initialized ("random", "resumed from
        ...", or the finetune restore summary).
    """

    step: int
    start_step: int
    history: list[dict[str, float]]
    eval_metrics: dict[str, float]
    init: str


class Progress:
    """Throughput and ETA from host wall time between log points.

    Args:
      start: the step the run starts from.
      total: the step it ends at.
      batch: the global batch size.
    """

    def __init__(self, start: int, total: int, batch: int):
        self.total, self.batch = total, batch
        self.last_step, self.last_time = start, time.perf_counter()
        self.step_time = 0.0

    def update(self, step: int) -> dict[str, float]:
        """Images/s and seconds per step since the last call."""
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        self.step_time = (now - self.last_time) / steps
        self.last_step, self.last_time = step, now
        return {
            "images_per_sec": self.batch / max(self.step_time, 1e-9),
            "step_time": self.step_time,
        }

    def eta(self, step: int) -> str:
        """The time left at the last measured step time, as `0h00m00s`."""
        seconds = int(self.step_time * (self.total - step))
        hours, rest = divmod(seconds, 3600)
        return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


class Reporter:
    """Console lines and summaries of one run.

    Args:
      model_dir: the Model artifact's root; summaries go to its `logs/`.
      is_chief: whether this worker writes summaries.
    """

    def __init__(self, model_dir: str, is_chief: bool):
        self._model_dir, self._is_chief = model_dir, is_chief
        self._writers = {}

    def _writer(self, name: str):
        if name not in self._writers:
            if self._is_chief:
                self._writers[name] = tf.summary.create_file_writer(
                    os.path.join(self._model_dir, model_io.LOGS_DIR, name)
                )
            else:
                self._writers[name] = tf.summary.create_noop_writer()
        return self._writers[name]

    def train(
        self, record: dict[str, float], progress: Progress
    ) -> dict[str, float]:
        """Reports a log point.

        Args:
          record: `step`, `loss`, `accuracy`, `grad_norm` and
            `learning_rate` at this point.
          progress: the run's `Progress`, updated here.

        Returns:
          The record with `images_per_sec` and `step_time` added.
        """
        step = record["step"]
        record = {**record, **progress.update(step)}
        with self._writer("train").as_default(step=step):
            for name, value in record.items():
                if name != "step":
                    tf.summary.scalar(name, value)
        logging.info(
            "step %d/%d (%.1f%%) loss %.4f acc %.3f lr %.3g | %.1f img/s, "
            "%.3f s/step, ETA %s",
            step,
            progress.total,
            100.0 * step / max(progress.total, 1),
            record["loss"],
            record["accuracy"],
            record["learning_rate"],
            record["images_per_sec"],
            record["step_time"],
            progress.eta(step),
        )
        return record

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """Reports an evaluation's metrics at `step`."""
        with self._writer("validation").as_default(step=step):
            for name, value in metrics.items():
                tf.summary.scalar(name, value)
        logging.info("eval at step %d: %s", step, metrics)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()
