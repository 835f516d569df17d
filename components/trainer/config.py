"""The Trainer's typed config: one frozen dataclass tree.

The defaults are the paper's ImageNet-1K pretraining recipe for CoAtNet-0
(Table 10, first column); `configs/` derives the other recipes from them by
changing a few fields. Every field is a plain JSON value, so the resolved
config round-trips through `_execution.json` (`base.config_to_json`,
`base.config_from_json`) and through `--config_override=a.b=value` flags
(`components.base.apply_overrides`).

Schedules can be given in epochs or in steps; `resolve_steps` turns them into
steps once the number of training examples is known.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
LOSSES = ("auto", "softmax", "sigmoid")
DECAYS = ("cosine", "linear", "constant")
HEAD_ROWS = ("auto", "match", "none")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which CoAtNet to build.

    Attributes:
      variant: a `coatnet_tf` variant name.
      image_size: the training resolution (square).
      drop_path_rate: stochastic depth rate of the last block; None takes
        `drop_path_by_variant[variant]`, else 0.
      drop_path_by_variant: Table 10 gives the rate per model size; a recipe
        lists them here so that `--variant` picks the matching rate.
      dropout_rate: dropout before the classifier (not stated in the paper).
      head_init_bias: initial classifier bias; None means -10 for a sigmoid
        loss (big_vision's i21k/JFT value: every logit starts at p~4.5e-5,
        near the true label frequency over ~20K classes) and 0 otherwise.
      overrides: further `coatnet_tf.create_model` keyword overrides; not
        `image_size` (set `image_size` above: the model, its datasets and
        the Model artifact read that one field) nor `num_classes` (the
        Examples artifact's label count).
    """

    variant: str = "coatnet-0"
    image_size: int = 224
    drop_path_rate: float | None = None
    drop_path_by_variant: dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "coatnet-0": 0.2,
            "coatnet-1": 0.3,
            "coatnet-2": 0.5,
            "coatnet-3": 0.7,
        }
    )
    dropout_rate: float = 0.0
    head_init_bias: float | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        owners = {
            "image_size": "set model.image_size (--image_size) instead",
            "num_classes": "it is the Examples artifact's label count",
        }
        for key in sorted(set(self.overrides) & set(owners)):
            raise ValueError(
                f"model.overrides may not set {key!r}: {owners[key]}."
            )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How the Examples artifact is read.

    Attributes:
      train_split: the split trained on.
      eval_split: the split evaluated on ("" for none).
      shuffle_buffer_size: examples in each input pipeline's shuffle
        buffer (encoded JPEGs, ~110 KB each at ImageNet sizes).
      cycle_length: files read in parallel by each input pipeline.
      block_length: consecutive records taken from one file per turn.
      num_parallel_calls: decode/augment parallelism; -1 lets tf.data tune.
      prefetch_batches: batches prefetched per pipeline; -1 lets tf.data
        tune.
      private_threadpool_size: threads of the input pipeline's own pool; 0
        shares TensorFlow's inter-op pool.
      compression: "GZIP" or "" (none); None reads the artifact's
        `compression` property, else each file's suffix.
    """

    train_split: str = "train"
    eval_split: str = "validation"
    shuffle_buffer_size: int = 16_384
    cycle_length: int = 16
    block_length: int = 1
    num_parallel_calls: int = -1
    prefetch_batches: int = -1
    private_threadpool_size: int = 0
    compression: str | None = None


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (Model Garden's ops).

    Attributes:
      inception_crop: random-resized crop (Szegedy et al.) instead of the
        eval center crop.
      crop_area_range: crop area as a fraction of the image.
      crop_aspect_range: crop width / height.
      flip: random horizontal flip.
      randaug_layers: RandAugment N; 0 turns RandAugment off.
      randaug_magnitude: RandAugment M.
      mixup_alpha: Mixup's Beta(alpha, alpha); 0 turns Mixup off. Mixup
        needs single-label data.
      cutmix_alpha: CutMix's alpha; 0 (the paper uses none) turns it off.
    """

    inception_crop: bool = True
    crop_area_range: tuple[float, float] = (0.08, 1.0)
    crop_aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    randaug_layers: int = 2
    randaug_magnitude: float = 15.0
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 0.0


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The training loss.

    Attributes:
      kind: "softmax" cross-entropy, per-class "sigmoid" cross-entropy, or
        "auto": sigmoid for multi-label data, softmax otherwise.
      label_smoothing: softmax: targets become y(1-ls) + ls/C; sigmoid:
        y(1-ls) + ls/2 (Keras' binary convention).
    """

    kind: str = "auto"
    label_smoothing: float = 0.1


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with decoupled weight decay, clipping and an optional EMA.

    Attributes:
      learning_rate: the peak learning rate.
      weight_decay: decoupled decay; each step subtracts lr * wd * w.
        Norm scales and offsets, biases and the relative bias tables are
        never decayed.
      no_decay_patterns: regexes of further variable names not decayed, on
        top of every variable of rank <= 1.
      beta_1: Adam's first-moment decay (not stated in the paper).
      beta_2: Adam's second-moment decay (not stated in the paper).
      epsilon: Adam's epsilon (not stated in the paper).
      clip_norm: clip the all-reduced gradient to this global norm; 0
        turns clipping off.
      ema_decay: keep an exponential moving average of the weights with
        this decay (used for evaluation and export); 0 keeps none.
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    no_decay_patterns: tuple[str, ...] = ("relative_position_bias",)
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    clip_norm: float = 1.0
    ema_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup from 0, then a decay to `end_learning_rate`.

    Attributes:
      decay: "cosine", "linear" or "constant" after the warmup.
      warmup_steps: warmup length in steps; when 0, `warmup_epochs` is used.
      warmup_epochs: warmup length in epochs of the training split.
      end_learning_rate: the learning rate at the last step (Table 10's
        "min LR").
    """

    decay: str = "cosine"
    warmup_steps: int = 10_000
    warmup_epochs: float = 0.0
    end_learning_rate: float = 1e-5


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the training runs.

    Attributes:
      strategy: "default", "mirrored", "multi_worker" (TF_CONFIG) or "tpu".
      tpu: the TPU's name or grpc:// address, or "local" on a TPU VM.
      zone: the TPU's GCP zone ("" lets the resolver find it).
      project: the TPU's GCP project ("" lets the resolver find it).
      precision: "float32", "mixed_bfloat16", or "auto": bfloat16 on TPU,
        float32 elsewhere.
      steps_per_execution: train steps inside one `tf.function` call
        (Orbit's steps_per_loop); large values hide host overhead on TPU.
      jit_compile: XLA-compile the per-replica step on CPU and GPU (TPU
        always compiles).
      checkpoint_every_steps: save a checkpoint every this many steps.
      keep_checkpoints: checkpoints kept in `<model>/checkpoints`.
      log_every_steps: console and TensorBoard logging interval.
      max_nonfinite_steps: a step whose loss or gradient is not finite is
        skipped (and counted); the run stops with an error after this many
        such steps in a row (0: never).
    """

    strategy: str = "default"
    tpu: str = ""
    zone: str = ""
    project: str = ""
    precision: str = "auto"
    steps_per_execution: int = 1
    jit_compile: bool = False
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 5
    log_every_steps: int = 100
    max_nonfinite_steps: int = 10


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Starting from other weights (finetune or warm start).

    The `base_model` input (a Model artifact) takes precedence over
    `init_checkpoint`. Only model weights are taken over; the optimizer,
    schedule and step start afresh. A run that already has checkpoints in
    its own model directory resumes from them instead.

    Attributes:
      init_checkpoint: a checkpoint prefix or directory, or a Model
        artifact's root; "" starts from random weights.
      head_rows: how to initialize the classifier when the label space
        changes. "auto": when every label is among the source labels (1K
        inside 21K), copy those rows, else a new head; "match": copy rows
        and fail when a label is missing; "none": keep the head as
        `coatnet_tf.restore_from_checkpoint` decides (restored when the
        class count matches, new otherwise).
    """

    init_checkpoint: str = ""
    head_rows: str = "auto"


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Everything the Trainer needs besides its input artifacts.

    Attributes:
      model: the network.
      data: reading the Examples artifact.
      augment: training augmentation.
      loss: the loss.
      optimizer: AdamW, clipping, EMA.
      schedule: the learning-rate schedule.
      runtime: strategy, precision, checkpointing, logging.
      finetune: initial weights.
      batch_size: the global training batch over all replicas.
      eval_batch_size: the global evaluation batch; 0 uses `batch_size`.
      train_steps: training length in steps; when 0, `train_epochs` is used.
      train_epochs: training length in epochs of the training split.
      eval_every_steps: evaluate the raw weights every this many steps; 0
        evaluates only at the end (the EMA weights when kept).
      eval_steps: batches per evaluation; 0 covers the whole split.
      seed: seeds TensorFlow, NumPy, Python and the input pipelines.
      deterministic: bit-reproducible training on CPU: op determinism, a
        serial input pipeline, and on resume the input stream is replayed
        up to the restored step (costs input time proportional to it).
        Off, a resumed run reshuffles with a seed derived from the step.
    """

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    batch_size: int = 4096
    eval_batch_size: int = 0
    train_steps: int = 0
    train_epochs: float = 300.0
    eval_every_steps: int = 0
    eval_steps: int = 0
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self):
        _check_choice("runtime.strategy", self.runtime.strategy, STRATEGIES)
        _check_choice("runtime.precision", self.runtime.precision, PRECISIONS)
        _check_choice("loss.kind", self.loss.kind, LOSSES)
        _check_choice("schedule.decay", self.schedule.decay, DECAYS)
        _check_choice("finetune.head_rows", self.finetune.head_rows, HEAD_ROWS)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1: {self.batch_size}.")
        if self.train_steps <= 0 and self.train_epochs <= 0:
            raise ValueError("Set train_steps or train_epochs above 0.")
        if self.runtime.steps_per_execution < 1:
            raise ValueError("runtime.steps_per_execution must be >= 1.")
        if self.runtime.checkpoint_every_steps < 1:
            raise ValueError("runtime.checkpoint_every_steps must be >= 1.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}.")


@dataclasses.dataclass(frozen=True)
class Steps:
    """Step counts resolved against the size of the training split.

    Attributes:
      total: training steps.
      warmup: warmup steps (at most `total`).
      steps_per_epoch: steps per pass over the training split.
    """

    total: int
    warmup: int
    steps_per_epoch: float


def resolve_steps(config: TrainerConfig, num_train_examples: int) -> Steps:
    """Turns epoch-based lengths into steps.

    Args:
      config: the config.
      num_train_examples: examples in the training split (0 if unknown).

    Returns:
      The resolved step counts.

    Raises:
      ValueError: a length is given in epochs but the split size is unknown.
    """
    per_epoch = num_train_examples / config.batch_size
    needs_epochs = config.train_steps <= 0 or (
        config.schedule.warmup_steps <= 0 and config.schedule.warmup_epochs > 0
    )
    if needs_epochs and num_train_examples <= 0:
        raise ValueError(
            "The config gives lengths in epochs but the Examples artifact "
            "does not say how many training examples it holds; set "
            "train_steps and schedule.warmup_steps."
        )
    total = config.train_steps
    if total <= 0:
        total = math.ceil(config.train_epochs * per_epoch)
    warmup = config.schedule.warmup_steps
    if warmup <= 0:
        warmup = math.ceil(config.schedule.warmup_epochs * per_epoch)
    return Steps(
        total=total, warmup=min(warmup, total), steps_per_epoch=per_epoch
    )


def model_overrides(config: TrainerConfig, sigmoid: bool) -> dict[str, Any]:
    """The `coatnet_tf.create_model` overrides this config asks for.

    Args:
      config: the config.
      sigmoid: whether the loss is a sigmoid (sets the default head bias).

    Returns:
      Keyword overrides for `create_model` (and the Model artifact's spec).
    """
    model = config.model
    rate = model.drop_path_rate
    if rate is None:
        rate = model.drop_path_by_variant.get(model.variant, 0.0)
    bias = model.head_init_bias
    if bias is None:
        bias = -10.0 if sigmoid else 0.0
    overrides = dict(model.overrides)
    overrides.update(
        drop_path_rate=float(rate),
        dropout_rate=float(model.dropout_rate),
        head_init_bias=float(bias),
    )
    return overrides


def load(
    name_or_path: str, overrides: Mapping[str, Any] | None = None
) -> TrainerConfig:
    """The one way a Trainer config is named: recipe, preset stage or file.

    Args:
      name_or_path: a recipe of configs/ ("pretrain_i21k"), a preset's
        stage ("i21k_to_i1k.finetune", configs/presets.py), or a JSON
        file: a partial TrainerConfig whose optional "base" is either of
        those, or a Trainer `_execution.json` (its "config").
      overrides: dotted field paths to values, applied last.

    Returns:
      The resolved config.

    Raises:
      ValueError: an unknown name, an unreadable file or an override that
        does not apply (naming it).
    """
    from components import base, cli

    data: dict[str, Any] = {}
    name = name_or_path
    if not _is_named(name):
        if not name.endswith(".json") and "/" not in name:
            _named(name)  # Raises: names the recipes and presets.
        path = cli.resolve_user_path(name_or_path)
        try:
            data = dict(base.read_json(path))
        # tf.io.gfile raises tf.errors.* (not OSError) for a missing file.
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"{name_or_path!r} is neither a recipe, a preset stage "
                f"(preset.stage) nor a readable JSON file: {e}"
            ) from e
        if "config" in data and "component" in data:
            data = dict(data["config"])
        name = data.pop("base", "")
    config = _named(name) if name else TrainerConfig()
    config = base.apply_overrides(config, data)
    return base.apply_overrides(config, overrides or {})


def _is_named(name: str) -> bool:
    import configs
    from configs import presets

    preset, _, stage = name.partition(".")
    return name in configs.list_configs() or (
        preset in presets.list_presets() and stage in presets.STAGES
    )


def _named(name: str) -> TrainerConfig:
    import configs
    from configs import presets

    if name in configs.list_configs():
        return configs.get_config(name)
    preset, _, stage = name.partition(".")
    if preset in presets.list_presets() and stage:
        return presets.stage_config(preset, stage)
    raise ValueError(
        f"Unknown base {name!r}: expected a recipe {configs.list_configs()}"
        f" or a preset stage, e.g. i21k_to_i1k.finetune (presets: "
        f"{presets.list_presets()})."
    )
