"""What every artifact shares: its typed record and the JSON it lives in.

Artifacts are self-describing: a finished component run writes
`_artifact.json` (type, URI, properties, producer) at the root of every
output artifact and `_execution.json` (the resolved config, inputs, outputs,
timing) beside it, so a component run alone by cron, Airflow or Vertex
leaves the same record as one run by the pipeline.

Artifact types and their owners in this package (TFX's standard names):

- `Examples`: `examples.py`, `<uri>/Split-<name>/` TFRecord shards.
- `Model`: `model.py`, spec, labels, checkpoints, `Format-Serving/`.
- `ModelEvaluation`: `evaluation.py`, `metrics.json` and PNG plots.
- `ModelBlessing`: `blessing.py`, the model and infra blessing markers.
- `PushedModel`: `model_store.py`, the pushed version in its properties.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from storage import objstore

ARTIFACT_FILE = "_artifact.json"
EXECUTION_FILE = "_execution.json"

# The artifact types the components exchange (TFX's standard names).
EXAMPLES = "Examples"
MODEL = "Model"
MODEL_EVALUATION = "ModelEvaluation"
MODEL_BLESSING = "ModelBlessing"
PUSHED_MODEL = "PushedModel"
ARTIFACT_TYPES = (
    EXAMPLES,
    MODEL,
    MODEL_EVALUATION,
    MODEL_BLESSING,
    PUSHED_MODEL,
)


class ArtifactError(ValueError):
    """An artifact is missing, of the wrong type, or unreadable."""


@dataclasses.dataclass
class Artifact:
    """A typed pointer to data a component produced or consumes.

    Attributes:
      type_name: one of `ARTIFACT_TYPES`.
      uri: the artifact's root directory (local path or gs://).
      properties: JSON-serializable facts about it (span, split names,
        blessed, pushed version, ...).
    """

    type_name: str
    uri: str
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.type_name not in ARTIFACT_TYPES:
            raise ArtifactError(
                f"Unknown artifact type {self.type_name!r}; expected one of "
                f"{ARTIFACT_TYPES}."
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(
            type_name=data["type_name"],
            uri=data["uri"],
            properties=dict(data.get("properties", {})),
        )

    def write(self) -> None:
        """Writes `_artifact.json` at the artifact's root: the commit."""
        write_json(os.path.join(self.uri, ARTIFACT_FILE), self.to_json())

    def exists(self) -> bool:
        """Whether the artifact is still committed (`is_complete`)."""
        return is_complete(self.uri)

    @classmethod
    def read(cls, uri: str, type_name: str | None = None) -> Artifact:
        """Reads the artifact whose root is `uri`.

        Args:
          uri: the artifact's root directory.
          type_name: when given, the type the caller expects.

        Returns:
          The artifact, with the URI it was found at (it may have moved).

        Raises:
          ArtifactError: no `_artifact.json` there, or the wrong type.
        """
        path = os.path.join(uri, ARTIFACT_FILE)
        found = _read_bytes(path)
        if found is None:
            raise ArtifactError(
                f"{uri} is not an artifact: {ARTIFACT_FILE} is missing. Pass "
                "the output directory of a finished component run (one "
                "without it is partial: re-run the component)."
            )
        artifact = cls.from_json(_parse_json(path, found))
        artifact.uri = uri
        if type_name is not None and artifact.type_name != type_name:
            raise ArtifactError(
                f"{uri} holds a {artifact.type_name} artifact, but a "
                f"{type_name} is needed here."
            )
        return artifact


def _by_objstore(path: str) -> bool:
    # Local disk and gs:// go through storage.objstore (fsync; one upload
    # per object; reachable by an emulator); other filesystems TensorFlow
    # knows (ram://, s3://, hdfs://) through tf.io.gfile.
    return objstore.is_remote(path) or "://" not in path


def _read_bytes(path: str) -> bytes | None:
    if _by_objstore(path):
        found = objstore.read(path)
        return None if found is None else found.data
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _remove(path: str) -> bool:
    if _by_objstore(path):
        return objstore.remove(path)
    if not tf.io.gfile.exists(path):
        return False
    tf.io.gfile.remove(path)
    return True


def is_complete(uri: str) -> bool:
    """Whether `uri` holds a committed artifact (its `_artifact.json`).

    Args:
      uri: an artifact root.

    Returns:
      True when the commit marker is there; data without it is partial.
    """
    path = os.path.join(uri, ARTIFACT_FILE)
    if _by_objstore(path):
        return objstore.exists(path)
    return tf.io.gfile.exists(path)


def retract(uri: str) -> bool:
    """Un-commits the artifact at `uri` before it is rewritten.

    The marker goes first, so a kill during the rewrite leaves a directory
    no reader takes for complete; the execution record follows.

    Args:
      uri: an artifact root.

    Returns:
      Whether it was complete.
    """
    was_complete = _remove(os.path.join(uri, ARTIFACT_FILE))
    _remove(os.path.join(uri, EXECUTION_FILE))
    return was_complete


def write_execution(uri: str, record: Mapping[str, Any]) -> None:
    """Writes a component run's `_execution.json` beside its artifact."""
    write_json(os.path.join(uri, EXECUTION_FILE), record)


def config_to_json(config: Any) -> dict[str, Any]:
    """A dataclass config as JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_from_json(config_type: type, data: Mapping[str, Any]) -> Any:
    """Builds `config_type` from JSON data, recursing into dataclasses.

    Args:
      config_type: a dataclass type.
      data: field values; unknown keys are an error.

    Returns:
      The config instance.

    Raises:
      ValueError: `data` has a key that is not a field of `config_type`.
    """
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(
            f"{config_type.__name__} has no fields {sorted(unknown)}; "
            f"known: {sorted(fields)}."
        )
    hints = _type_hints(config_type)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_from_json(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return config_type(**kwargs)


def _type_hints(config_type: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_type)
    except Exception:  # Unresolvable forward references: no recursion.
        return {}


def write_json(path: str, data: Any) -> None:
    """Writes JSON so that a reader sees the old or the new content.

    Local files and gs:// go through `storage.objstore.write_atomic`
    (local: temp file, fsync, rename, fsync of the folder, so a power loss
    leaves one of the two; gs://: one upload); elsewhere a temp object is
    renamed over the old one.
    """
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    if _by_objstore(path):
        objstore.write_atomic(path, text.encode())
        return
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path: str) -> Any:
    """Reads a JSON file, naming it in the error when it is not JSON.

    Raises:
      ArtifactError: the file is not JSON.
      tf.errors.NotFoundError: there is no such file.
    """
    found = _read_bytes(path)
    if found is None:
        raise tf.errors.NotFoundError(None, None, f"{path} does not exist.")
    return _parse_json(path, found)


def _parse_json(path: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from e


def resolve_user_path(path: str) -> str:
    """Resolves an artifact or file path the user typed on a command line.

    `bazel run` starts a binary inside its runfiles tree, so relative paths
    are resolved against the directory the user ran it from.

    Args:
      path: a local path, relative or absolute, or a URI such as gs://...

    Returns:
      URIs and absolute paths unchanged; relative paths joined to the
      directory `bazel run` was called from (or the current directory).
    """
    if not path or "://" in path or os.path.isabs(path):
        return path
    base_dir = os.environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd()
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
