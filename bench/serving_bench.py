r"""Serving benchmark: the exported SavedModel's latency and throughput.

  bazel run //bench:serving_bench -- --variant=coatnet-0 --image_size=224
  bazel run //bench:serving_bench -- --serving_precision=float32 --grpc=false

Exports a randomly initialized model with the Exporter's code (the same
graph as a trained one: preprocessing, model, top-k, label lookup), in
each `--serving_precision` (float32, bfloat16 or both; bfloat16 is the
model under tf_keras's mixed_bfloat16 policy, see
`components.exporter.serving_model`), loads it back and times the
`serving_default` signature on JPEG bytes:

- latency at batch 1 over `--latency_iterations` calls (p50, p90, p99,
  mean, in ms; p99 of 100 calls lies between the two slowest);
- images/s at batch `--batch_size` (16), and beside it the model's own
  forward rate at that batch (the Keras model of the same precision on
  already preprocessed images, a `tf.function` as `model_bench` times
  it), the two timed alternately call by call so both see the same
  machine load; `serving_over_forward` is their ratio, what decoding,
  preprocessing, top-k and the signature cost (the goal: at least 0.9).

With --grpc (the default) the same is measured through the local gRPC
PredictionService and the client, which adds serialization and the loopback
hop. Prints one JSON object, one entry per precision under `precisions`.
bfloat16 speed means something only on a CPU with AVX512_BF16 or AMX
(`cpu.bf16_isa`); elsewhere bfloat16 is emulated and the bfloat16 goal
says it is not measurable.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

# tf_keras (Keras 2) must be chosen before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from artifacts import model as model_io  # noqa: E402
from artifacts import model_store  # noqa: E402
from bench import cpu as cpu_lib  # noqa: E402
from components import preprocessing  # noqa: E402
from components.exporter import component as exporter  # noqa: E402
from components.exporter import serving_model  # noqa: E402
from serving import client as client_lib  # noqa: E402
from serving import local_server, servables  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "coatnet-0", "coatnet_tf variant.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Model resolution.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier width.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Throughput batch size.")
_ITERATIONS = flags.DEFINE_integer(
    "iterations", 20, "Timed batch calls, each of serving and forward."
)
_LATENCY_ITERATIONS = flags.DEFINE_integer(
    "latency_iterations", 100, "Timed batch-1 calls (p99 needs many)."
)
_WARMUP = flags.DEFINE_integer("warmup_iterations", 3, "Untimed calls.")
_GRPC = flags.DEFINE_bool("grpc", True, "Also time through gRPC.")
_PRECISION = flags.DEFINE_enum(
    "serving_precision",
    "both",
    [*serving_model.SERVING_PRECISIONS, "both"],
    "The export's compute precision, or both.",
)
# The serving graph keeps at least this share of the model's forward rate.
SERVING_OVER_FORWARD_TARGET = 0.9


def time_calls(call, iterations: int, warmup: int) -> np.ndarray:
    """Seconds per call over `iterations` calls after `warmup` calls."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def time_alternately(calls, iterations: int, warmup: int) -> list[np.ndarray]:
    """Like `time_calls` for several calls, taking turns call by call."""
    for _ in range(warmup):
        for call in calls:
            call()
    seconds = [[] for _ in calls]
    for _ in range(iterations):
        for call, out in zip(calls, seconds):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return [np.array(s) for s in seconds]


def latency(seconds: np.ndarray) -> dict:
    """Percentiles and mean of call times, in ms."""
    ms = seconds * 1e3
    out = {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}
    out["mean"] = round(float(ms.mean()), 3)
    out["samples"] = len(ms)
    return out


def throughput(seconds: np.ndarray, n: int) -> dict:
    return {
        f"batch{n}_images_per_second": round(
            float(n * len(seconds) / seconds.sum()), 2
        ),
        f"batch{n}_ms_per_call": round(float(seconds.mean() * 1e3), 3),
    }


def summarize(seconds_1: np.ndarray, seconds_n: np.ndarray, n: int) -> dict:
    """Latency percentiles at batch 1 and throughput at batch n."""
    return {"batch1_latency_ms": latency(seconds_1), **throughput(seconds_n, n)}


def export_model(root: str, source: str, precision: str) -> str:
    """Exports the trained model at `source`; returns the SavedModel dir."""
    model, spec, _ = model_io.load_model(source)
    return exporter.export(
        source,
        os.path.join(root, f"exported_{precision}"),
        model,
        spec,
        exporter.ExporterConfig(
            warmup_batch_sizes=(1, _BATCH.value), serving_precision=precision
        ),
    )


def write_trained(root: str) -> str:
    """A random-weight Model artifact, as the Trainer writes one."""
    spec = model_io.ModelSpec(_VARIANT.value, _CLASSES.value, _SIZE.value)
    model = model_io.build_model(spec)
    labels = [f"class_{i}" for i in range(spec.num_classes)]
    source = os.path.join(root, "trained")
    model_io.write_model(source, model, spec, labels)
    return source


def bench_precision(root: str, source: str, precision: str, images) -> dict:
    """Exports in `precision` and times serving against the forward."""
    n = _BATCH.value
    started = time.perf_counter()
    export_dir = export_model(root, source, precision)
    export_seconds = time.perf_counter() - started
    one, batch = tf.constant(images[:1]), tf.constant(images)
    serve = tf.saved_model.load(export_dir).signatures[
        serving_model.PREDICT_SIGNATURE
    ]
    model = serving_model.load_serving_model(source, precision)
    preprocessed = tf.stack(
        [preprocessing.preprocess_for_eval(b, _SIZE.value) for b in images]
    )
    # Traced for a batch of any size, as model_bench's forward and the
    # serving signature are.
    infer = tf.function(
        lambda x: model(x, training=False),
        autograph=False,
        input_signature=[tf.TensorSpec([None, *preprocessed.shape[1:]])],
    )

    def forward():
        return infer(preprocessed)

    def serve_batch():
        serve(image_bytes=batch)["probabilities"].numpy()

    serving_n, forward_n = time_alternately(
        [serve_batch, lambda: forward().numpy()],
        _ITERATIONS.value,
        _WARMUP.value,
    )
    serving_1 = time_calls(
        lambda: serve(image_bytes=one)["probabilities"].numpy(),
        _LATENCY_ITERATIONS.value,
        _WARMUP.value,
    )
    served = summarize(serving_1, serving_n, n)
    own = throughput(forward_n, n)
    key = f"batch{n}_images_per_second"
    result = {
        "export_seconds": round(export_seconds, 1),
        "saved_model": served,
        "model_forward": own,
        "serving_over_forward": round(served[key] / own[key], 4),
        # Per pair of alternate calls: robust to drifts of machine speed.
        "serving_over_forward_paired_median": round(
            float(np.median(forward_n / serving_n)), 4
        ),
    }
    if _GRPC.value:
        base = os.path.join(root, "models", f"bench_{precision}")
        model_store.write_version(base, export_dir, 1)
        with local_server.LocalServer(
            [servables.ModelSource("bench", base)], warmup=False
        ) as server:
            with client_lib.ServingClient(server.address, "bench") as c:
                c.wait_until_available()
                result["grpc_local_server"] = summarize(
                    time_calls(
                        lambda: c.predict_images(images[:1]),
                        _LATENCY_ITERATIONS.value,
                        _WARMUP.value,
                    ),
                    time_calls(
                        lambda: c.predict_images(images),
                        _ITERATIONS.value,
                        _WARMUP.value,
                    ),
                    n,
                )
    return result


def goal(precision: str, ratio: float, support: str) -> dict:
    """The serving_over_forward goal of one precision."""
    out = {"target": SERVING_OVER_FORWARD_TARGET, "serving_over_forward": ratio}
    if precision == "bfloat16" and support == "none":
        out.update(
            met=None,
            status="not measurable on this CPU: no AVX512_BF16 or AMX, "
            "bfloat16 is emulated",
        )
    else:
        met = ratio >= SERVING_OVER_FORWARD_TARGET
        out.update(met=met, status="met" if met else "not met")
    return out


def main(argv):
    del argv  # Unused.
    if _PRECISION.value == "both":
        precisions = list(serving_model.SERVING_PRECISIONS)
    else:
        precisions = [_PRECISION.value]
    cpu = cpu_lib.cpu_info()
    support = cpu_lib.bf16_support(cpu.get("isa"))
    result = {
        "benchmark": "serving",
        "variant": _VARIANT.value,
        "image_size": _SIZE.value,
        "num_classes": _CLASSES.value,
        "batch_size": _BATCH.value,
        "input": "JPEG bytes, serving_default",
        "iterations": _ITERATIONS.value,
        "latency_iterations": _LATENCY_ITERATIONS.value,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu": dict(cpu, bf16_isa=support),
        "tensorflow": tf.__version__,
        "onednn": os.environ.get(
            "TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow's default)"
        ),
        "precisions": {},
        "goals": {},
    }
    images = serving_model.synthetic_images(_SIZE.value, _BATCH.value)
    with tempfile.TemporaryDirectory(prefix="serving_bench_") as root:
        source = write_trained(root)
        for precision in precisions:
            measured = bench_precision(root, source, precision, images)
            result["precisions"][precision] = measured
            result["goals"][f"{precision}_serving_over_forward"] = goal(
                precision, measured["serving_over_forward"], support
            )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
