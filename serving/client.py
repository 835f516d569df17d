"""A TF Serving gRPC client for the exported CoAtNet classifiers.

Built on `tensorflow_serving.apis`; talks to `tensorflow_model_server` or
`serving.local_server` alike:

  with ServingClient("localhost:8500", "coatnet") as client:
      client.wait_until_available()
      for p in client.predict_images(["cat.jpg"]):
          print(p.top_k)

Every call has a deadline; UNAVAILABLE (server starting, version loading,
connection reset) is retried with exponential backoff; errors are raised as
`ServingError` naming the server, the model and the method. Images go as
encoded bytes (a few hundred KB each) rather than float pixels, and the
message limit is raised from gRPC's 4 MB default, the usual cause of
RESOURCE_EXHAUSTED on large batches.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_SIGNATURE = "classify"
IMAGE_BYTES_KEY = "image_bytes"
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20


class ServingError(Exception):
    """A request failed; names the server, model and gRPC status."""

    def __init__(
        self, method: str, server: str, model: str, code, details: str
    ):
        self.method, self.server, self.model = method, server, model
        self.code = code
        self.details = details
        super().__init__(
            f"{method} for model {model!r} at {server} failed: "
            f"{code.name if code else 'ERROR'}: {details}"
        )


@dataclasses.dataclass(frozen=True)
class TlsOptions:
    """TLS settings. Empty root certificates use the system roots.

    Attributes:
      root_certificates: PEM file of the CAs that sign the server's cert.
      client_certificate: PEM client certificate (mutual TLS).
      client_key: PEM key of the client certificate.
      server_name_override: the name to verify the server certificate
        against, when it differs from the host dialled (e.g. an IP).
    """

    root_certificates: str = ""
    client_certificate: str = ""
    client_key: str = ""
    server_name_override: str = ""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's result from an image signature.

    Attributes:
      top_k: (label, score, class id) best first.
      probabilities: `[C]` per-class probabilities (None if filtered out).
    """

    top_k: list[tuple[str, float, int]]
    probabilities: np.ndarray | None = None


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


class ServingClient:
    """Predict, Classify, GetModelMetadata and GetModelStatus calls."""

    def __init__(
        self,
        server: str,
        model: str,
        *,
        version: int | None = None,
        version_label: str = "",
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: TlsOptions | None = None,
    ):
        """Opens a channel (lazily connected).

        Args:
          server: HOST:PORT.
          model: the model name on the server.
          version: pin a version (else the latest).
          version_label: or a label such as "stable" (from models.config).
          timeout: per-attempt deadline in seconds.
          retries: extra attempts after UNAVAILABLE.
          backoff: first retry delay in seconds; doubles, with jitter.
          max_message_bytes: send and receive limit.
          tls: TLS options; None for a plaintext channel.
        """
        if version is not None and version_label:
            raise ValueError("Give a version or a version_label, not both.")
        self.server, self.model = server, model
        self._version, self._label = version, version_label
        self._timeout, self._retries, self._backoff = timeout, retries, backoff
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(server, options=options)
        else:
            if tls.server_name_override:
                options.append(
                    ("grpc.ssl_target_name_override", tls.server_name_override)
                )
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.root_certificates),
                private_key=_read(tls.client_key),
                certificate_chain=_read(tls.client_certificate),
            )
            self._channel = grpc.secure_channel(
                server, credentials, options=options
            )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(
            self._channel
        )
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, spec, signature: str = "") -> None:
        spec.name = self.model
        if self._version is not None:
            spec.version.value = self._version
        elif self._label:
            spec.version_label = self._label
        if signature:
            spec.signature_name = signature

    def _call(self, method: str, rpc: Callable, request) -> Any:
        """Calls with a deadline, retrying UNAVAILABLE with backoff."""
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                return rpc(request, timeout=self._timeout)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.UNAVAILABLE and (
                    attempt < self._retries
                ):
                    time.sleep(delay * (0.5 + random.random()))
                    delay *= 2
                    continue
                details = e.details() if hasattr(e, "details") else str(e)
                raise ServingError(
                    method, self.server, self.model, code, details
                ) from None
        raise AssertionError("unreachable")

    def predict(
        self,
        inputs: dict[str, Any],
        signature: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """A raw Predict call.

        Args:
          inputs: input key -> array-like or TensorProto.
          signature: the signature name.
          output_filter: outputs to return (empty: all).

        Returns:
          Output key -> NumPy array (strings as bytes objects).
        """
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature)
        for key, value in inputs.items():
            if not isinstance(value, tensor_pb2.TensorProto):
                value = tf.make_tensor_proto(value)
            request.inputs[key].CopyFrom(value)
        request.output_filter.extend(output_filter)
        response = self._call("Predict", self._predictions.Predict, request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def predict_images(
        self,
        images: Iterable[str | bytes],
        signature: str = DEFAULT_SIGNATURE,
        with_probabilities: bool = False,
    ) -> list[Prediction]:
        """Classifies image files (paths) or encoded image bytes.

        Args:
          images: paths (local or gs://) or JPEG/PNG bytes; one batch.
          signature: an image-bytes signature (input `image_bytes`).
          with_probabilities: also return the full probability vectors.

        Returns:
          One `Prediction` per image, in order.
        """
        data = [i if isinstance(i, bytes) else _read(i) for i in images]
        outputs = ["top_k_ids", "top_k_labels", "top_k_scores"]
        if with_probabilities:
            outputs.append("probabilities")
        result = self.predict(
            {IMAGE_BYTES_KEY: tf.make_tensor_proto(data, dtype=tf.string)},
            signature,
            outputs,
        )
        predictions = []
        for i in range(len(data)):
            top = [
                (label.decode("utf-8"), float(score), int(cid))
                for label, score, cid in zip(
                    result["top_k_labels"][i],
                    result["top_k_scores"][i],
                    result["top_k_ids"][i],
                )
            ]
            probs = result["probabilities"][i] if with_probabilities else None
            predictions.append(Prediction(top, probs))
        return predictions

    def classify(
        self,
        examples: Iterable[tf.train.Example | bytes],
        signature: str = CLASSIFY_SIGNATURE,
    ) -> list[list[tuple[str, float]]]:
        """A Classify call with tf.Examples (or their serialized bytes).

        Returns:
          Per example, (class label, score) as the server ordered them.
        """
        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, signature)
        for example in examples:
            entry = request.input.example_list.examples.add()
            if isinstance(example, bytes):
                entry.ParseFromString(example)
            else:
                entry.CopyFrom(example)
        response = self._call("Classify", self._predictions.Classify, request)
        return [
            [(c.label, c.score) for c in row.classes]
            for row in response.result.classifications
        ]

    def get_model_metadata(self) -> dict[str, dict[str, Any]]:
        """The served signatures.

        Returns:
          Signature name -> {"method": str, "inputs": {key: (dtype name,
          shape with -1 for unknown)}, "outputs": {...}}.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call(
            "GetModelMetadata", self._predictions.GetModelMetadata, request
        )
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)

        def tensors(infos):
            return {
                key: (
                    # DT_INVALID (0) marks the init-op pseudo-signature.
                    tf.dtypes.as_dtype(info.dtype).name
                    if info.dtype
                    else "invalid",
                    [d.size for d in info.tensor_shape.dim],
                )
                for key, info in infos.items()
            }

        return {
            name: {
                "method": sig.method_name,
                "inputs": tensors(sig.inputs),
                "outputs": tensors(sig.outputs),
            }
            for name, sig in signature_map.signature_def.items()
        }

    def get_model_status(self) -> list[dict[str, Any]]:
        """Per version: {"version", "state" (name), "error_message"}."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(
            "GetModelStatus", self._models.GetModelStatus, request
        )
        states = get_model_status_pb2.ModelVersionStatus.State
        return [
            {
                "version": s.version,
                "state": states.Name(s.state),
                "error_message": s.status.error_message,
            }
            for s in response.model_version_status
        ]

    def wait_until_available(self, timeout: float = 60.0) -> int:
        """Polls GetModelStatus until a version is AVAILABLE.

        Returns:
          The newest available version.

        Raises:
          ServingError: not available before `timeout` (the last error or
            the version states are in the message).
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                states = self.get_model_status()
                ready = [
                    s["version"] for s in states if s["state"] == "AVAILABLE"
                ]
                if ready:
                    return max(ready)
                failed = [s for s in states if s["error_message"]]
                if failed and len(failed) == len(states):
                    # Every version failed to load: waiting cannot help.
                    raise ServingError(
                        "GetModelStatus",
                        self.server,
                        self.model,
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"no version loaded: {failed}",
                    )
                last = f"versions {states}"
            except ServingError as e:
                if e.code == grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                last = str(e)
            if time.monotonic() > deadline:
                raise ServingError(
                    "GetModelStatus",
                    self.server,
                    self.model,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no AVAILABLE version after {timeout:.0f}s ({last})",
                )
            time.sleep(0.25)


def format_table(
    paths: Sequence[str], predictions: Sequence[Prediction]
) -> str:
    """A fixed-width table: image, rank, label, score, class id."""
    rows = [("image", "rank", "label", "score", "id")]
    for path, prediction in zip(paths, predictions):
        for rank, (label, score, cid) in enumerate(prediction.top_k, 1):
            rows.append((path, str(rank), label, f"{score:.4f}", str(cid)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
        for row in rows
    )
