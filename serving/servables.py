"""Loading and running SavedModels the way TF Serving does, in Python.

The model store is TF Serving's: `<base_path>/<integer version>/` holding a
SavedModel; a version counts once its `saved_model.pb` exists (the Pusher
writes that file last or renames the whole directory into place). Which
versions are served follows the `models.config` version policy (latest N,
all, or specific versions), and the version labels map names to versions.
On load, the requests in `assets.extra/tf_serving_warmup_requests` are
replayed, and a failure fails the load, as `--enable_model_warmup` does.

Request handling (`predict`, `classify`) raises `RequestError` with the
gRPC status code TF Serving would return, so the gRPC layer only maps it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    predict_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from artifacts import model_store

State = get_model_status_pb2.ModelVersionStatus.State
DEFAULT_SIGNATURE = "serving_default"
# Strings (and Classify examples) per request. Each costs ~2 bytes on the
# wire but ~70 in Python and TF, so a 64 MB message of empty strings would
# otherwise take gigabytes; far above any model's batch limit.
MAX_STRING_ELEMENTS = 1 << 16


class RequestError(Exception):
    """A request failed; `code` is the gRPC status to return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One entry of models.config.

    Attributes:
      name: the model name clients ask for.
      base_path: the directory holding the integer version directories.
      policy: "latest", "all" or "specific".
      num_versions: for "latest": how many of the newest to serve.
      versions: for "specific": the versions to serve.
      version_labels: label -> version (e.g. {"stable": 3}).
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def wanted(self, available: Sequence[int]) -> list[int]:
        """The versions to serve among those on disk."""
        ordered = sorted(available)
        if self.policy == "all":
            return ordered
        if self.policy == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-max(self.num_versions, 1) :]


def sources_from_config(text: str) -> list[ModelSource]:
    """Parses a models.config text proto (`ModelServerConfig`).

    Raises:
      ValueError: not a valid config, or a platform other than tensorflow.
    """
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ValueError(f"Invalid models.config: {e}") from e
    sources = []
    for model in config.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"Model {model.name!r}: platform {model.model_platform!r} is "
                "not served; use 'tensorflow'."
            )
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        sources.append(
            ModelSource(
                name=model.name,
                base_path=model.base_path,
                policy=kind,
                num_versions=policy.latest.num_versions or 1,
                versions=tuple(policy.specific.versions),
                version_labels=dict(model.version_labels),
            )
        )
    return sources


@dataclasses.dataclass
class Servable:
    """One version of one model and its state."""

    name: str
    version: int
    path: str
    state: int = State.START
    error: str = ""
    error_code: int = 0
    signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dataclasses.field(
        default_factory=dict
    )
    functions: dict = dataclasses.field(default_factory=dict)
    loaded: object = None


def read_signature_defs(export_dir: str) -> dict[str, object]:
    """The SignatureDefs of a SavedModel's serving meta graph."""
    proto = model_store.read_saved_model(export_dir)
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise RequestError(
        grpc.StatusCode.NOT_FOUND, f"{export_dir} has no 'serve' meta graph."
    )


class ModelManager:
    """Keeps the wanted versions of each model loaded."""

    def __init__(self, sources: Sequence[ModelSource], warmup: bool = True):
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"Duplicate model names in {names}.")
        self._sources = {s.name: s for s in sources}
        self._servables: dict[str, dict[int, Servable]] = {
            s.name: {} for s in sources
        }
        self._warmup = warmup
        self._lock = threading.Lock()  # Guards the servable states.
        # One refresh at a time (the poller and an explicit refresh() may
        # overlap); loads run outside `_lock` so requests are not blocked.
        self._refresh_lock = threading.Lock()

    @property
    def model_names(self) -> list[str]:
        return list(self._sources)

    def refresh(self) -> None:
        """Loads new wanted versions, then unloads unwanted ones.

        Unwanted versions are unloaded only when a wanted version is
        AVAILABLE, so a broken push never takes the model offline.
        """
        with self._refresh_lock:
            for name, source in self._sources.items():
                self._refresh_model(name, source)

    def _refresh_model(self, name: str, source: ModelSource) -> None:
        """Brings one model's loaded versions in line with its policy."""
        wanted = source.wanted(model_store.ready_versions(source.base_path))
        current = self._servables[name]
        for version in wanted:
            old = current.get(version)
            # New, or unloaded earlier and wanted again (a newer version
            # was deleted); versions that failed to load stay failed.
            if old is None or (old.state == State.END and not old.error):
                servable = Servable(
                    name,
                    version,
                    os.path.join(source.base_path, str(version)),
                    State.LOADING,
                )
                with self._lock:
                    current[version] = servable
                self._load(servable)
        # TF Serving's availability-preserving policy: an old version is
        # unloaded only once a wanted one is AVAILABLE (loaded and warmed
        # up), so a new version that fails to load leaves the old serving.
        with self._lock:
            replaced = any(
                current[v].state == State.AVAILABLE
                for v in wanted
                if v in current
            )
        if not replaced:
            if any(s.state == State.AVAILABLE for s in current.values()):
                logging.warning(
                    "No wanted version of %s is available (%s); the "
                    "loaded ones keep serving.",
                    name,
                    wanted,
                )
            return
        for version, servable in list(current.items()):
            if version not in wanted and servable.state == State.AVAILABLE:
                with self._lock:
                    servable.state = State.END
                    servable.loaded = None
                    servable.functions = {}
                logging.info("Unloaded %s version %d.", name, version)

    def _load(self, servable: Servable) -> None:
        try:
            loaded = tf.saved_model.load(servable.path, tags=["serve"])
            servable.signature_defs = read_signature_defs(servable.path)
            servable.functions = dict(loaded.signatures)
            servable.loaded = loaded
            if self._warmup:
                run_warmup(servable)
        except Exception as e:  # Any load failure ends the version.
            logging.error(
                "Loading %s version %d failed: %s",
                servable.name,
                servable.version,
                e,
            )
            with self._lock:
                servable.state = State.END
                servable.error = f"{type(e).__name__}: {e}"
                servable.error_code = grpc.StatusCode.UNKNOWN.value[0]
                servable.loaded, servable.functions = None, {}
            return
        with self._lock:
            servable.state = State.AVAILABLE
        logging.info(
            "Serving %s version %d from %s.",
            servable.name,
            servable.version,
            servable.path,
        )

    def resolve(self, spec) -> Servable:
        """The AVAILABLE servable a request's ModelSpec names.

        Raises:
          RequestError: NOT_FOUND for an unknown model or version,
            INVALID_ARGUMENT for an unknown version label.
        """
        source = self._sources.get(spec.name)
        if source is None:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Latest({spec.name}); "
                f"serving models {self.model_names}.",
            )
        with self._lock:
            available = {
                v: s
                for v, s in self._servables[spec.name].items()
                if s.state == State.AVAILABLE
            }
        if spec.HasField("version"):
            version = spec.version.value
            what = f"Specific({spec.name}, {version})"
        elif spec.version_label:
            if spec.version_label not in source.version_labels:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: "
                    f"{spec.version_label}",
                )
            version = source.version_labels[spec.version_label]
            what = f"Specific({spec.name}, {version})"
        else:
            version = max(available) if available else None
            what = f"Latest({spec.name})"
        if version not in available:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: {what}; available "
                f"versions: {sorted(available)}.",
            )
        return available[version]

    def status(self, name: str, version: int | None) -> list[Servable]:
        """Every known version of `name` (or just `version`), oldest first.

        Raises:
          RequestError: NOT_FOUND when there is nothing to report.
        """
        if name not in self._sources:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find any versions of model {name}",
            )
        with self._lock:
            found = [
                dataclasses.replace(s)
                for v, s in sorted(self._servables[name].items())
                if version is None or v == version
            ]
        if not found:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find version {version} of model {name}"
                if version is not None
                else f"Could not find any versions of model {name}",
            )
        return found


def _input_tensors(servable: Servable, signature: str, tensors) -> dict:
    """Converts request TensorProtos, checking keys and dtypes."""
    sig = servable.signature_defs.get(signature)
    if sig is None or signature not in servable.functions:
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f'Serving signature key "{signature}" not found; the model has '
            f"{sorted(servable.functions)}.",
        )
    expected, sent = set(sig.inputs), set(tensors)
    if expected != sent:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input keys do not match signature {signature!r}: sent "
            f"{sorted(sent)}, expected {sorted(expected)}.",
        )
    out = {}
    for key, proto in tensors.items():
        want = tf.dtypes.as_dtype(sig.inputs[key].dtype)
        got = _dtype(key, proto)
        if want != got:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects input {key!r} to be {want.name} but "
                f"{got.name} is provided.",
            )
        check_payload(key, proto)
        try:
            out[key] = tf.constant(tf.make_ndarray(proto), dtype=want)
        except Exception as e:  # Any malformed tensor is the client's.
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Input {key!r} is not a valid {want.name} tensor: "
                f"{type(e).__name__}: {e}",
            ) from e
    return out


# The repeated field holding each dtype's values, and values per element.
_VALUE_FIELDS = {
    tf.float32: ("float_val", 1),
    tf.float64: ("double_val", 1),
    tf.int32: ("int_val", 1),
    tf.int16: ("int_val", 1),
    tf.int8: ("int_val", 1),
    tf.uint8: ("int_val", 1),
    tf.uint16: ("int_val", 1),
    tf.int64: ("int64_val", 1),
    tf.uint32: ("uint32_val", 1),
    tf.uint64: ("uint64_val", 1),
    tf.bool: ("bool_val", 1),
    tf.string: ("string_val", 1),
    tf.float16: ("half_val", 1),
    tf.bfloat16: ("half_val", 1),
    tf.complex64: ("scomplex_val", 2),
    tf.complex128: ("dcomplex_val", 2),
}


def _dtype(key: str, proto) -> tf.dtypes.DType:
    try:
        return tf.dtypes.as_dtype(proto.dtype)
    except TypeError as e:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Input {key!r} has an unknown dtype enum {proto.dtype}.",
        ) from e


def check_payload(key: str, proto) -> None:
    """Refuses a TensorProto whose shape and values disagree.

    TensorFlow's own conversion repeats the last value to fill a declared
    shape, so a few hundred bytes declaring [5000000] expand to gigabytes.
    Here the payload must hold exactly one value per declared element
    (or `tensor_content` of exactly elements * itemsize bytes), which
    bounds every expanded tensor by the message size.

    Args:
      key: the input's name, for the message.
      proto: a TensorProto.

    Raises:
      RequestError: INVALID_ARGUMENT.
    """

    def refuse(why):
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Input {key!r}: {why}"
        )

    dtype = _dtype(key, proto)
    if proto.tensor_shape.unknown_rank:
        refuse("the tensor shape has unknown rank.")
    elements = 1
    for dim in proto.tensor_shape.dim:
        if dim.size < 0:
            refuse(f"negative dimension {dim.size} in the shape.")
        elements *= dim.size
        if elements > 2**40:
            refuse("the declared shape is absurdly large.")
    if dtype not in _VALUE_FIELDS:
        refuse(f"dtype {dtype.name} is not accepted in requests.")
    field, per_element = _VALUE_FIELDS[dtype]
    if proto.tensor_content:
        if dtype == tf.string:
            refuse("string tensors cannot use tensor_content.")
        want = elements * dtype.size
        if len(proto.tensor_content) != want:
            refuse(
                f"tensor_content has {len(proto.tensor_content)} bytes; the "
                f"shape {_shape(proto)} of {dtype.name} needs {want}."
            )
        if len(getattr(proto, field)):
            refuse(f"both tensor_content and {field} are set.")
        return
    count = len(getattr(proto, field))
    if count != elements * per_element:
        refuse(
            f"{count} values in {field} for shape {_shape(proto)} "
            f"({elements} elements); send every element's value."
        )
    if dtype == tf.string and elements > MAX_STRING_ELEMENTS:
        refuse(
            f"{elements} strings; at most {MAX_STRING_ELEMENTS} per request."
        )


def _shape(proto) -> list[int]:
    return [d.size for d in proto.tensor_shape.dim]


def _call(servable: Servable, signature: str, inputs: dict) -> dict:
    """Runs a signature, mapping TF and binding errors to gRPC codes."""
    try:
        outputs = servable.functions[signature](**inputs)
    except tf.errors.OpError as e:
        code = {c.value[0]: c for c in grpc.StatusCode}.get(
            e.error_code, grpc.StatusCode.INTERNAL
        )
        raise RequestError(code, e.message) from e
    except (TypeError, ValueError) as e:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
    except MemoryError as e:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "Out of memory."
        ) from e
    return {k: v.numpy() for k, v in outputs.items()}


def predict(servable: Servable, request) -> predict_pb2.PredictResponse:
    """Serves a PredictRequest (output_filter honoured)."""
    signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
    inputs = _input_tensors(servable, signature, request.inputs)
    outputs = _call(servable, signature, inputs)
    wanted = list(request.output_filter) or list(outputs)
    unknown = set(wanted) - set(outputs)
    if unknown:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output_filter names unknown outputs {sorted(unknown)}; the "
            f"signature has {sorted(outputs)}.",
        )
    response = predict_pb2.PredictResponse()
    _fill_spec(response.model_spec, servable, signature)
    for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
    return response


def classify(servable: Servable, request):
    """Serves a ClassificationRequest through an `inputs` signature."""
    signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
    which = request.input.WhichOneof("kind")
    if which:
        count = len(getattr(request.input, which).examples)
        if count > MAX_STRING_ELEMENTS:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{count} examples; at most {MAX_STRING_ELEMENTS} per request.",
            )
    if which == "example_list":
        examples = [
            e.SerializeToString() for e in request.input.example_list.examples
        ]
    elif which == "example_list_with_context":
        both = request.input.example_list_with_context
        examples = []
        for e in both.examples:
            merged = tf.train.Example()
            merged.CopyFrom(both.context)
            merged.MergeFrom(e)
            examples.append(merged.SerializeToString())
    else:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, "Classify input is empty."
        )
    sig = servable.signature_defs.get(signature)
    if sig is not None and (
        set(sig.inputs) != {"inputs"}
        or not {"classes", "scores"} & set(sig.outputs)
    ):
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Signature {signature!r} is not a classification signature "
            "(input 'inputs', outputs 'classes' and/or 'scores').",
        )
    proto = tf.make_tensor_proto(examples, dtype=tf.string)
    outputs = _call(
        servable,
        signature,
        _input_tensors(servable, signature, {"inputs": proto}),
    )
    classes, scores = outputs.get("classes"), outputs.get("scores")
    response = classification_pb2.ClassificationResponse()
    _fill_spec(response.model_spec, servable, signature)
    for i in range(len(examples)):
        row = response.result.classifications.add()
        width = (classes if classes is not None else scores).shape[1]
        for j in range(width):
            entry = row.classes.add()
            if classes is not None:
                entry.label = classes[i, j].decode("utf-8")
            if scores is not None:
                entry.score = float(scores[i, j])
    return response


def run_warmup(servable: Servable) -> int:
    """Replays the SavedModel's warmup requests; returns how many.

    Raises:
      ValueError: too many records, or a record of an unsupported kind.
      RequestError: a request failed.
    """
    logs = model_store.read_warmup(servable.path)
    for log in logs:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            predict(servable, log.predict_log.request)
        elif kind == "classify_log":
            classify(servable, log.classify_log.request)
        else:
            raise ValueError(f"Unsupported warmup record kind {kind!r}.")
    logging.info("Ran %d warmup requests on %s.", len(logs), servable.path)
    return len(logs)


def _fill_spec(spec, servable: Servable, signature: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature
