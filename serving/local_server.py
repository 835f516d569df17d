r"""A local TF Serving stand-in: the real gRPC API, served from Python.

Implements `tensorflow.serving.PredictionService` (Predict, Classify,
GetModelMetadata) and `tensorflow.serving.ModelService` (GetModelStatus)
with the servicers generated in `tensorflow_serving.apis`, over SavedModels
in TF Serving's `<base_path>/<version>/` layout. Clients written against it
work unchanged against `tensorflow_model_server`. Used by the tests and the
Exporter's infra-validation, and for local development through its CLI,
`local_server_main.py` (`bazel run //serving:local_server`).

Differences from TF Serving: no request batching (batching.config is for
the real server), no REST API, and a version that fails to load is not
retried. Errors carry TF Serving's status codes: bad image bytes give
INVALID_ARGUMENT (the server keeps serving), an unknown model or version
NOT_FOUND, an unknown signature FAILED_PRECONDITION.

Bounds against hostile clients: requests over `max_message_bytes` are
refused by gRPC (RESOURCE_EXHAUSTED); at most `max_workers` calls run and
`max_concurrent_rpcs` are admitted, the rest get RESOURCE_EXHAUSTED; a
request that does not parse, or a tensor whose values do not match its
declared shape (`servables.check_payload`), gets INVALID_ARGUMENT before
anything is expanded. Unlike TF Serving, a TensorProto is never filled by
repeating its last value.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures

import grpc
from absl import logging
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import servables

# gRPC's default receive limit of 4 MB is too small for a batch of
# full-size JPEGs; TF Serving's 2 GB lets one request pin 2 GB per call.
MAX_MESSAGE_BYTES = 64 << 20
MAX_WORKERS = 4
MAX_CONCURRENT_RPCS = 16


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify and GetModelMetadata over a `ModelManager`."""

    def __init__(self, manager: servables.ModelManager):
        self._manager = manager

    def Predict(self, request, context):
        return _serve(
            context,
            lambda: servables.predict(
                self._manager.resolve(request.model_spec), request
            ),
        )

    def Classify(self, request, context):
        return _serve(
            context,
            lambda: servables.classify(
                self._manager.resolve(request.model_spec), request
            ),
        )

    def GetModelMetadata(self, request, context):
        def metadata():
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise servables.RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "metadata_field must be ['signature_def'], got "
                    f"{sorted(fields)}.",
                )
            servable = self._manager.resolve(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(signature_map)
            return response

        return _serve(context, metadata)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus over a `ModelManager`."""

    def __init__(self, manager: servables.ModelManager):
        self._manager = manager

    def GetModelStatus(self, request, context):
        def status():
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for s in self._manager.status(spec.name, version):
                entry = response.model_version_status.add()
                entry.version = s.version
                entry.state = s.state
                entry.status.error_code = s.error_code
                entry.status.error_message = s.error
            return response

        return _serve(context, status)


def _serve(context, handler):
    """Runs a handler; a `RequestError` becomes its gRPC status."""
    try:
        return handler()
    except servables.RequestError as e:
        context.abort(e.code, e.message)


# The methods served, with their request and response messages.
_METHODS = {
    "tensorflow.serving.PredictionService": {
        "Predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
        "Classify": (
            classification_pb2.ClassificationRequest,
            classification_pb2.ClassificationResponse,
        ),
        "GetModelMetadata": (
            get_model_metadata_pb2.GetModelMetadataRequest,
            get_model_metadata_pb2.GetModelMetadataResponse,
        ),
    },
    "tensorflow.serving.ModelService": {
        "GetModelStatus": (
            get_model_status_pb2.GetModelStatusRequest,
            get_model_status_pb2.GetModelStatusResponse,
        ),
    },
}


def _parsing_handler(method, request_type, response_type):
    """A unary handler that parses the request itself.

    gRPC's generated handlers answer an unparsable request with INTERNAL,
    which reads as a server fault; a malformed message is the client's
    error, so it gets INVALID_ARGUMENT.
    """

    def behavior(data, context):
        try:
            request = request_type.FromString(data)
        except Exception as e:  # DecodeError, recursion limit, bad UTF-8.
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Could not parse the {request_type.DESCRIPTOR.name}: {e}",
            )
        return method(request, context)

    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=None,
        response_serializer=response_type.SerializeToString,
    )


def _handlers(servicers: dict) -> list:
    """Generic handlers for `_METHODS` on the given servicers."""
    out = []
    for service, methods in _METHODS.items():
        servicer = servicers[service]
        out.append(
            grpc.method_handlers_generic_handler(
                service,
                {
                    name: _parsing_handler(getattr(servicer, name), *types)
                    for name, types in methods.items()
                },
            )
        )
    return out


class LocalServer:
    """A PredictionService + ModelService on one port.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        sources: Sequence[servables.ModelSource],
        host: str = "localhost",
        port: int = 0,
        max_workers: int = MAX_WORKERS,
        max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        warmup: bool = True,
        poll_seconds: float = 0.0,
        server_credentials: grpc.ServerCredentials | None = None,
    ):
        """Configures the server (nothing is loaded or bound yet).

        Args:
          sources: the models to serve.
          host: interface to bind ("localhost" for loopback only).
          port: TCP port; 0 picks a free one (see `port` after start).
          max_workers: request threads: calls running at once.
          max_concurrent_rpcs: calls admitted (running or queued); more
            get RESOURCE_EXHAUSTED.
          max_message_bytes: the largest request accepted (and response
            sent); larger ones get RESOURCE_EXHAUSTED.
          warmup: replay each version's warmup requests on load.
          poll_seconds: rescan the base paths this often for new or removed
            versions (0: only at start and on `refresh()`).
          server_credentials: TLS credentials; None serves plaintext.
        """
        self.manager = servables.ModelManager(sources, warmup=warmup)
        self._host = host
        self._requested_port = port
        self._max_workers = max_workers
        self._max_concurrent_rpcs = max(max_concurrent_rpcs, max_workers)
        self._max_message_bytes = max_message_bytes
        self._poll_seconds = poll_seconds
        self._credentials = server_credentials
        self._server = None
        self._stop = threading.Event()
        self._poller = None
        self.port = None

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    def start(self) -> LocalServer:
        """Loads the models, then opens the port (as TF Serving does)."""
        self.manager.refresh()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers),
            handlers=_handlers(
                {
                    "tensorflow.serving.PredictionService": (
                        PredictionServicer(self.manager)
                    ),
                    "tensorflow.serving.ModelService": ModelServicer(
                        self.manager
                    ),
                }
            ),
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
            ],
            maximum_concurrent_rpcs=self._max_concurrent_rpcs,
        )
        target = f"{self._host}:{self._requested_port}"
        if self._credentials is None:
            self.port = self._server.add_insecure_port(target)
        else:
            self.port = self._server.add_secure_port(target, self._credentials)
        if not self.port:
            raise OSError(f"Could not bind {target}.")
        self._server.start()
        if self._poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()
        logging.info("Serving %s on %s.", self.manager.model_names, target)
        return self

    def refresh(self) -> None:
        """Picks up new and removed versions now."""
        self.manager.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.manager.refresh()
            except Exception as e:  # Keep polling through transient errors.
                logging.error("Refreshing the model store failed: %s", e)

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace).wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str = ""
) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, client certificates are required."""

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_server_credentials(
        [(read(key_file), read(cert_file))],
        root_certificates=read(client_ca_file) if client_ca_file else None,
        require_client_auth=bool(client_ca_file),
    )
