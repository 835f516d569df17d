"""Distribution strategies by name, as Model Garden's `distribute_utils`.

- "tpu": a Cloud TPU found by `TPUClusterResolver` from its name (or
  grpc:// address), zone and project, or the TPU VM's own chips with
  `tpu="local"` (no remote connection then).
- "mirrored": all local GPUs, else all local (logical) CPUs.
- "multi_worker": `MultiWorkerMirroredStrategy` over the cluster in the
  `TF_CONFIG` environment variable.
- "default": TensorFlow's default strategy (one device, no distribution).

`create_strategy` must run before any other TensorFlow op in the process:
multi-worker and TPU setup reconfigure the runtime.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

from coatnet_tf import config as model_config


def create_strategy(
    kind: str, tpu: str = "", zone: str = "", project: str = ""
) -> tf.distribute.Strategy:
    """Creates the strategy `kind` names.

    Args:
      kind: "default", "mirrored", "multi_worker" or "tpu".
      tpu: for "tpu": the TPU name or address, or "local" on a TPU VM.
      zone: for "tpu": the GCP zone ("" to discover it).
      project: for "tpu": the GCP project ("" to discover it).

    Returns:
      The strategy.

    Raises:
      ValueError: unknown kind, "tpu" without a TPU name, or "multi_worker"
        without TF_CONFIG.
    """
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        logging.info("MirroredStrategy over %s", devices)
        return tf.distribute.MirroredStrategy(devices)
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy=multi_worker reads the cluster from the TF_CONFIG "
                "environment variable, which is not set."
            )
        cluster = json.loads(os.environ["TF_CONFIG"])
        logging.info("MultiWorkerMirroredStrategy, TF_CONFIG=%s", cluster)
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=(
                tf.distribute.cluster_resolver.TFConfigClusterResolver()
            )
        )
    if kind == "tpu":
        return _tpu_strategy(tpu, zone, project)
    raise ValueError(
        f"Unknown strategy {kind!r}; expected default, mirrored, "
        "multi_worker or tpu."
    )


def _tpu_strategy(tpu: str, zone: str, project: str) -> tf.distribute.Strategy:
    if not tpu:
        raise ValueError(
            "strategy=tpu needs --tpu: the TPU's name or grpc:// address, or "
            "'local' on a TPU VM."
        )
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu, zone=zone or None, project=project or None
    )
    if tpu != "local":
        # A remote TPU (TPU node): the host talks to it over gRPC. On a TPU
        # VM the chips are local and there is nothing to connect to.
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
    logging.info(
        "TPUStrategy on %s: %d replicas", tpu, strategy.num_replicas_in_sync
    )
    return strategy


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` runs on TPU cores."""
    return isinstance(
        strategy,
        (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy),
    )


def resolve_precision(precision: str, strategy: tf.distribute.Strategy) -> str:
    """The Keras policy of a `runtime.precision`: "auto" is mixed_bfloat16
    on TPU, float32 elsewhere; other values are kept."""
    if precision == "auto":
        return "mixed_bfloat16" if is_tpu(strategy) else "float32"
    return precision


def bias_gradient_caveat(
    precision: str, kernels: str, on_tpu: bool, jit_compile: bool
) -> str | None:
    """A warning for a run whose bfloat16 bias gradients are inaccurate.

    TensorFlow's CPU kernel for a bias gradient (`BiasAddGrad`) sums a
    bfloat16 gradient in bfloat16, which over a batch of pixels misses the
    sum by as much as its size. XLA (TPU, or `jit_compile`) accumulates in
    float32, and the "fused" kernels compute those sums as float32-
    accumulating matmuls; the "reference" layers on CPU without XLA do
    not.

    Args:
      precision: the resolved Keras policy.
      kernels: the model's `kernels` setting.
      on_tpu: whether the strategy is a TPU one.
      jit_compile: `runtime.jit_compile`.

    Returns:
      The warning, or None when the run is not affected.
    """
    if (
        precision != "mixed_bfloat16"
        or kernels != model_config.REFERENCE
        or on_tpu
        or jit_compile
    ):
        return None
    return (
        "mixed_bfloat16 with model kernels 'reference' off TPU: "
        "TensorFlow's CPU BiasAddGrad sums bfloat16 bias gradients in "
        "bfloat16, inaccurately over a batch of pixels. Set "
        "model.overrides.kernels='fused' (the default) or "
        "runtime.jit_compile=true."
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs (summaries, model).

    Every worker of a multi-worker run takes part in checkpoint saves (they
    hold collectives), but only the chief's copy is kept.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    return task_type == "chief" or (
        task_type == "worker"
        and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in a multi-worker run (0 elsewhere)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ):
        return 0
    return int(resolver.task_id or 0)
