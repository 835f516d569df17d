"""The learning-rate schedule and AdamW, as Table 10 specifies them.

The schedule comes from Model Garden's optimization factory (linear warmup
from 0, then cosine, linear or no decay, offset by the warmup so the decay
spans exactly the remaining steps). The optimizer is tf_keras' `AdamW` (the
class Model Garden builds for "adamw_experimental"): decoupled weight decay
(each step subtracts lr * wd * w), variables excluded by identity, and a
built-in EMA whose averages are optimizer variables, so checkpoints carry
them and a resumed run continues the same average. Model Garden's own EMA
wrapper only wraps its legacy optimizers, which clip per replica before
the all-reduce; the train step here clips the all-reduced gradient instead.
"""

from __future__ import annotations

import re

import tensorflow as tf
import tf_keras
from official.modeling.optimization import optimizer_factory
from official.modeling.optimization.configs import optimization_config

from components.trainer import config as config_lib


def build_schedule(
    optimizer: config_lib.OptimizerConfig,
    schedule: config_lib.ScheduleConfig,
    steps: config_lib.Steps,
) -> tf_keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate as a function of the step.

    Args:
      optimizer: gives the peak learning rate.
      schedule: decay kind and end learning rate.
      steps: total and warmup steps.

    Returns:
      A schedule; lr(0) is 0 with a warmup, the peak without one; lr(total)
      is `end_learning_rate` (the peak for "constant").
    """
    peak = optimizer.learning_rate
    decay_steps = max(1, steps.total - steps.warmup)
    if schedule.decay == "cosine":
        lr = {
            "type": "cosine",
            "cosine": {
                "initial_learning_rate": peak,
                "decay_steps": decay_steps,
                "alpha": schedule.end_learning_rate / peak,
                "offset": steps.warmup,
            },
        }
    elif schedule.decay == "linear":
        lr = {
            "type": "polynomial",
            "polynomial": {
                "initial_learning_rate": peak,
                "decay_steps": decay_steps,
                "end_learning_rate": schedule.end_learning_rate,
                "power": 1.0,
                "offset": steps.warmup,
            },
        }
    else:
        lr = {"type": "constant", "constant": {"learning_rate": peak}}
    params = {
        "optimizer": {"type": "adamw_experimental"},
        "learning_rate": lr,
    }
    if steps.warmup > 0:
        params["warmup"] = {
            "type": "linear",
            "linear": {
                "warmup_steps": steps.warmup,
                "warmup_learning_rate": 0.0,
            },
        }
    factory = optimizer_factory.OptimizerFactory(
        optimization_config.OptimizationConfig(params)
    )
    built = factory.build_learning_rate()
    if isinstance(built, float):
        # "constant" without warmup is a bare float in the factory.
        return _Constant(built)
    return built


class _Constant(tf_keras.optimizers.schedules.LearningRateSchedule):
    """A constant schedule, so every config logs lr the same way."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, step):
        del step  # Unused.
        return tf.constant(self.value, tf.float32)

    def get_config(self):
        return {"value": self.value}


def build_optimizer(
    config: config_lib.OptimizerConfig,
    learning_rate: tf_keras.optimizers.schedules.LearningRateSchedule,
    variables: list[tf.Variable],
) -> tf_keras.optimizers.Optimizer:
    """AdamW over `variables`, weight decay excluded where it must be.

    Call in the strategy's scope; build it (`optimizer.build(variables)`)
    once the initial weights are in place, since the EMA starts from them.

    Args:
      config: the optimizer config.
      learning_rate: the schedule.
      variables: the model's trainable variables.

    Returns:
      The optimizer, not yet built. Clipping is left to the train step.
    """
    optimizer = tf_keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=config.weight_decay or None,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        epsilon=config.epsilon,
        use_ema=config.ema_decay > 0,
        ema_momentum=config.ema_decay if config.ema_decay > 0 else 0.99,
    )
    optimizer.exclude_from_weight_decay(
        var_list=no_decay_variables(variables, config.no_decay_patterns)
    )
    return optimizer


def no_decay_variables(
    variables: list[tf.Variable], patterns: tuple[str, ...]
) -> list[tf.Variable]:
    """The variables AdamW must not decay.

    Every variable of rank <= 1 (norm scales and offsets, biases) and those
    whose name matches a pattern (the relative bias tables, rank 3).

    Args:
      variables: candidate variables.
      patterns: regexes searched in each variable's name.

    Returns:
      The excluded subset, in order.
    """
    compiled = [re.compile(p) for p in patterns]
    return [
        v
        for v in variables
        if v.shape.rank <= 1 or any(p.search(v.name) for p in compiled)
    ]
