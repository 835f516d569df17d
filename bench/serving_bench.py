r"""Serving benchmark: the exported SavedModel's latency and throughput.

  bazel run //bench:serving_bench -- --variant=coatnet-0 --image_size=224

Exports a randomly initialized model with the Exporter's code (the same
graph as a trained one: preprocessing, model, top-k, label lookup), loads
it back and times the `serving_default` signature on JPEG bytes:

- latency at batch 1 (p50, p90, mean, in ms);
- images/s at batch `--batch_size` (16).

With --grpc (the default) the same is measured through the local gRPC
PredictionService and the client, which adds serialization and the loopback
hop. Prints one JSON object.
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
from components.exporter import component as exporter  # noqa: E402
from components.exporter import serving_model  # noqa: E402
from serving import client as client_lib  # noqa: E402
from serving import local_server, servables  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "coatnet-0", "coatnet_tf variant.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Model resolution.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier width.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Throughput batch size.")
_ITERATIONS = flags.DEFINE_integer("iterations", 20, "Timed calls each.")
_WARMUP = flags.DEFINE_integer("warmup_iterations", 3, "Untimed calls.")
_GRPC = flags.DEFINE_bool("grpc", True, "Also time through gRPC.")


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


def summarize(seconds_1: np.ndarray, seconds_n: np.ndarray, n: int) -> dict:
    """Latency percentiles at batch 1 and throughput at batch n."""
    ms = seconds_1 * 1e3
    return {
        "batch1_latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p90": round(float(np.percentile(ms, 90)), 3),
            "mean": round(float(ms.mean()), 3),
        },
        f"batch{n}_images_per_second": round(
            float(n * len(seconds_n) / seconds_n.sum()), 2
        ),
        f"batch{n}_ms_per_call": round(float(seconds_n.mean() * 1e3), 3),
    }


def export_model(root: str) -> str:
    """Exports a random-weight model; returns the SavedModel directory."""
    spec = model_io.ModelSpec(_VARIANT.value, _CLASSES.value, _SIZE.value)
    model = model_io.build_model(spec)
    labels = [f"class_{i}" for i in range(spec.num_classes)]
    source = os.path.join(root, "trained")
    model_io.write_model(source, model, spec, labels)
    return exporter.export(
        source,
        os.path.join(root, "exported"),
        model,
        spec,
        exporter.ExporterConfig(warmup_batch_sizes=(1, _BATCH.value)),
    )


def main(argv):
    del argv  # Unused.
    n = _BATCH.value
    with tempfile.TemporaryDirectory(prefix="serving_bench_") as root:
        started = time.perf_counter()
        export_dir = export_model(root)
        export_seconds = time.perf_counter() - started
        images = serving_model.synthetic_images(_SIZE.value, n)
        one, batch = tf.constant(images[:1]), tf.constant(images)
        loaded = tf.saved_model.load(export_dir)
        serve = loaded.signatures[serving_model.PREDICT_SIGNATURE]
        result = {
            "benchmark": "serving",
            "variant": _VARIANT.value,
            "image_size": _SIZE.value,
            "num_classes": _CLASSES.value,
            "input": "JPEG bytes, serving_default",
            "iterations": _ITERATIONS.value,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "tensorflow": tf.__version__,
            "export_seconds": round(export_seconds, 1),
            "saved_model": summarize(
                time_calls(
                    lambda: serve(image_bytes=one),
                    _ITERATIONS.value,
                    _WARMUP.value,
                ),
                time_calls(
                    lambda: serve(image_bytes=batch),
                    _ITERATIONS.value,
                    _WARMUP.value,
                ),
                n,
            ),
        }
        if _GRPC.value:
            base = os.path.join(root, "models", "bench")
            model_store.write_version(base, export_dir, 1)
            with local_server.LocalServer(
                [servables.ModelSource("bench", base)], warmup=False
            ) as server:
                with client_lib.ServingClient(server.address, "bench") as c:
                    c.wait_until_available()
                    result["grpc_local_server"] = summarize(
                        time_calls(
                            lambda: c.predict_images(images[:1]),
                            _ITERATIONS.value,
                            _WARMUP.value,
                        ),
                        time_calls(
                            lambda: c.predict_images(images),
                            _ITERATIONS.value,
                            _WARMUP.value,
                        ),
                        n,
                    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
