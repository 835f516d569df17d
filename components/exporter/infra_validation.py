"""Infra-validation: the exported model serves, in a fresh process.

As TFX's InfraValidator: before any push, the SavedModel is copied into a
model store, loaded by a separate serving process (`serving.local_server_main`,
which also replays the warmup requests on load, as TF Serving does), and
every warmup request is sent to it over gRPC. The answers must match what
the in-memory Keras model computes on the same images with the shared eval
preprocessing:

- probabilities and top-k scores within `atol` (default 1e-4 absolute;
  the exported graph runs the same float32 kernels, but Grappler fuses and
  reorders ops, so the last bits may differ);
- top-k ids and labels equal, except between scores closer than `atol`
  (a near-tie may legitimately swap).

A bfloat16 export is compared with the same float32 model, with a
tolerance for bfloat16 (`DEFAULT_BFLOAT16_ATOL`): it keeps 8 significant
bits, and after a deep network the probabilities move by up to a few
1e-2, while a wrong weight, preprocessing or graph moves them by far more.
Whether the rounding costs accuracy is the Exporter's top-1 check
(`precision_check`), on labelled images rather than warmup requests.

A fresh process proves the SavedModel is self-contained: no Python object,
module or file of the exporting process is needed to load and run it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from artifacts import blessing as blessing_lib
from artifacts import examples as examples_lib
from artifacts import model as model_io
from artifacts import model_store
from components import base, preprocessing
from components.exporter import serving_model
from serving import client as client_lib

DEFAULT_ATOL = 1e-4
# coatnet-tiny with random weights moved by up to 6e-3 in bfloat16; trained
# models' peaked softmaxes move more (d p = p (1 - p) d logit, up to 0.25
# times the logit error).
DEFAULT_BFLOAT16_ATOL = 0.05


@dataclasses.dataclass(frozen=True)
class InfraResult:
    """The verdict.

    Attributes:
      blessed: every request answered and matched.
      reason: a sentence for the logs and the artifact.
      num_requests: warmup requests sent.
      max_abs_diff: the largest probability difference seen.
    """

    blessed: bool
    reason: str
    num_requests: int = 0
    max_abs_diff: float = float("nan")


def reference_outputs(
    model: tf_keras.Model,
    spec: model_io.ModelSpec,
    labels: Sequence[str],
    log,
    top_k: int,
) -> dict[str, np.ndarray]:
    """What the in-memory model answers to one warmup record.

    Args:
      model: the Keras model, weights loaded.
      spec: its spec.
      labels: class names.
      log: a PredictionLog (predict_log or classify_log).
      top_k: the exported top-k width.

    Returns:
      probabilities, top_k_ids, top_k_labels (str), top_k_scores.
    """
    kind = log.WhichOneof("log_type")
    size = spec.image_size
    if kind == "classify_log":
        images = [
            preprocessing.preprocess_for_eval(
                e.features.feature[examples_lib.IMAGE_ENCODED].bytes_list.value[
                    0
                ],
                size,
            )
            for e in log.classify_log.request.input.example_list.examples
        ]
    else:
        request = log.predict_log.request
        signature = request.model_spec.signature_name
        if signature == serving_model.IMAGE_TENSOR_SIGNATURE:
            batch = tf.make_ndarray(request.inputs[serving_model.IMAGES_KEY])
            images = [
                preprocessing.preprocess_image_for_eval(tf.constant(i), size)
                for i in batch
            ]
        else:
            batch = tf.make_ndarray(
                request.inputs[serving_model.IMAGE_BYTES_KEY]
            )
            images = [
                preprocessing.preprocess_for_eval(tf.constant(b), size)
                for b in batch
            ]
    logits = model(tf.stack(images), training=False).numpy()
    logits = logits.astype(np.float64)
    if spec.multi_label:
        probs = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    k = max(1, min(top_k, probs.shape[1]))
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return {
        "probabilities": probs,
        "top_k_ids": ids,
        "top_k_labels": np.array(labels, dtype=object)[ids],
        "top_k_scores": np.take_along_axis(probs, ids, axis=1),
    }


def compare(
    expected: dict[str, np.ndarray],
    served: dict[str, np.ndarray],
    atol: float = DEFAULT_ATOL,
) -> tuple[bool, str, float]:
    """Checks one answer against the reference (see the module docstring).

    Returns:
      (match, what differs or "", max |probability difference|).
    """
    diff = 0.0
    for key in ("probabilities", "top_k_scores"):
        if key not in served:
            continue
        if served[key].shape != expected[key].shape:
            return (
                False,
                f"{key} has shape {served[key].shape}, expected "
                f"{expected[key].shape}",
                float("inf"),
            )
        diff = max(diff, float(np.abs(served[key] - expected[key]).max()))
    if diff > atol:
        return False, f"scores differ by {diff:.3g} > {atol:g}", diff
    scores = expected["top_k_scores"]
    # A rank is decided when its score is clear of both neighbours.
    gaps = np.abs(np.diff(scores, axis=1))
    clear = np.ones(scores.shape, bool)
    clear[:, 1:] &= gaps > atol
    clear[:, :-1] &= gaps > atol
    for key in ("top_k_ids", "top_k_labels"):
        if key not in served:
            continue
        got = np.asarray(served[key])
        if got.dtype == object:
            got = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(
                got
            )
        want = np.asarray(expected[key])
        if got.shape != want.shape or np.any((got != want) & clear):
            return False, f"{key} differ: got {got}, expected {want}", diff
    return True, "", diff


def validate(
    export_dir: str,
    model: tf_keras.Model,
    spec: model_io.ModelSpec,
    labels: Sequence[str],
    model_name: str,
    top_k: int,
    atol: float = DEFAULT_ATOL,
    timeout: float = 300.0,
) -> InfraResult:
    """Serves `export_dir` in a fresh process and checks its answers.

    Args:
      export_dir: the SavedModel (with its warmup file).
      model: the in-memory model it was exported from.
      spec: the model's spec.
      labels: class names.
      model_name: the name to serve it under.
      top_k: the exported top-k width.
      atol: the score tolerance.
      timeout: seconds for the server to start, load and warm up.

    Returns:
      The verdict; failures are reported in it, not raised.
    """
    logs = model_store.read_warmup(export_dir)
    if not logs:
        return InfraResult(False, "The export has no warmup requests.")
    with tempfile.TemporaryDirectory(prefix="infra_validation_") as tmp:
        base = os.path.join(tmp, "models", model_name)
        model_store.write_version(base, export_dir, 1)
        port_file = os.path.join(tmp, "port")
        log_path = os.path.join(tmp, "server.log")
        with open(log_path, "wb") as log_file:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serving.local_server_main",
                    "--port=0",
                    f"--port_file={port_file}",
                    f"--model_name={model_name}",
                    f"--model_base_path={base}",
                    "--file_system_poll_wait_seconds=0",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=_child_env(),
            )
            try:
                return _check(
                    server,
                    port_file,
                    log_path,
                    model_name,
                    logs,
                    lambda log: reference_outputs(
                        model, spec, labels, log, top_k
                    ),
                    atol,
                    time.monotonic() + timeout,
                )
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _check(
    server: subprocess.Popen,
    port_file: str,
    log_path: str,
    model_name: str,
    logs: Sequence,
    reference: Callable[[object], dict[str, np.ndarray]],
    atol: float,
    deadline: float,
) -> InfraResult:
    """Waits for the server, replays `logs`, compares with `reference`."""
    timeout = deadline - time.monotonic()
    while not os.path.exists(port_file):
        if server.poll() is not None:
            return InfraResult(
                False,
                f"The serving process exited with {server.returncode} before "
                f"serving: {_tail(log_path)}",
            )
        if time.monotonic() > deadline:
            return InfraResult(
                False, f"Not serving after {timeout:.0f}s: {_tail(log_path)}"
            )
        time.sleep(0.2)
    with open(port_file) as f:
        address = f"localhost:{f.read().strip()}"
    worst = 0.0
    with client_lib.ServingClient(address, model_name, timeout=60) as client:
        try:
            client.wait_until_available(max(deadline - time.monotonic(), 1))
            for i, log in enumerate(logs):
                served = _send(client, log)
                expected = reference(log)
                ok, why, diff = compare(expected, served, atol)
                worst = max(worst, diff)
                if not ok:
                    return InfraResult(
                        False, f"Warmup request {i}: {why}", i + 1, worst
                    )
        except client_lib.ServingError as e:
            return InfraResult(False, f"{e}; {_tail(log_path)}", 0, worst)
    logging.info(
        "Infra-validation passed: %d requests, max |diff| %.3g.",
        len(logs),
        worst,
    )
    return InfraResult(
        True,
        f"{len(logs)} warmup requests answered in a fresh process; max "
        f"|probability diff| {worst:.3g} <= {atol:g}.",
        len(logs),
        worst,
    )


def _send(client: client_lib.ServingClient, log) -> dict[str, np.ndarray]:
    if log.WhichOneof("log_type") == "classify_log":
        request = log.classify_log.request
        rows = client.classify(
            list(request.input.example_list.examples),
            request.model_spec.signature_name,
        )
        return {
            "top_k_labels": np.array(
                [[c.encode("utf-8") for c, _ in row] for row in rows],
                dtype=object,
            ),
            "top_k_scores": np.array([[s for _, s in row] for row in rows]),
        }
    request = log.predict_log.request
    return client.predict(
        dict(request.inputs), request.model_spec.signature_name
    )


def _child_env() -> dict[str, str]:
    """The parent's environment, with its import path (Bazel runfiles)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "server log: " + " | ".join(f.read().splitlines()[-lines:])
    except OSError:
        return "no server log"


def write_infra_blessing(
    artifact: base.Artifact, blessed: bool, reason: str
) -> None:
    """Writes INFRA_BLESSED or INFRA_NOT_BLESSED and the properties."""
    blessing_lib.write(artifact, blessed, blessing_lib.INFRA, reason)
    (logging.info if blessed else logging.warning)(
        "Infra-validation: %s", reason
    )
