"""The component contract every component follows (mirrors TFX, no TFX).

A component is a library with

- a `ComponentSpec`: its name, its typed input and output artifacts, and the
  dataclass type of its execution properties (its typed config);
- a `run(inputs, outputs, config)` entry point that reads the input
  artifacts, writes the output artifacts under their URIs and fills in their
  properties;
- a thin CLI (an absl `main`) that builds the config from flags and calls
  `execute`.

Artifacts are self-describing: `execute` writes `_artifact.json` (type, URI,
properties, producer) at the root of every output artifact and
`_execution.json` (the resolved config, inputs, outputs, timing) beside it, so
a component run alone by cron, Airflow or Vertex leaves the same record as one
run by the pipeline. The pipeline's run ledger builds lineage from these.

`_artifact.json` is the commit marker: written last, atomically, after
everything else of the artifact; removed first (`retract`) before anything
is rewritten. A directory without it is partial whatever else it holds, and
the component that owns it cleans it and redoes (or resumes) its work, so a
`kill -9` at any moment leaves the previous complete state or something no
reader takes for complete. A component may refuse to rewrite a complete
artifact (`Component.check_rewrite`), never its own unfinished output.

Artifact types and their layouts (as TFX's standard artifacts):

- `Examples`: `<uri>/Split-<name>/` TFRecord shards of tf.Example.
- `Model`: `<uri>/Format-Serving/` SavedModel, `<uri>/checkpoints/`.
- `ModelEvaluation`: `<uri>/metrics.json` and PNG plots.
- `ModelBlessing`: an empty `<uri>/BLESSED` or `<uri>/NOT_BLESSED`.
- `PushedModel`: the pushed version directory in its properties.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Union

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
        try:
            data = json.loads(found)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path} is not valid JSON: {e}") from e
        artifact = cls.from_json(data)
        artifact.uri = uri
        if type_name is not None and artifact.type_name != type_name:
            raise ArtifactError(
                f"{uri} holds a {artifact.type_name} artifact, but a "
                f"{type_name} is needed here."
            )
        return artifact


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """What a component takes and makes.

    Attributes:
      name: the component id, e.g. "ExampleGen".
      inputs: input key to artifact type; keys in `optional_inputs` may be
        absent.
      outputs: output key to artifact type.
      config_type: the dataclass of the execution properties.
      optional_inputs: input keys that may be left out.
    """

    name: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    config_type: type
    optional_inputs: frozenset[str] = frozenset()


class Component:
    """Base class: subclasses set `SPEC` and implement `run`."""

    SPEC: ClassVar[ComponentSpec]

    def run(
        self,
        inputs: Mapping[str, Artifact],
        outputs: Mapping[str, Artifact],
        config: Any,
    ) -> None:
        """Does the work: reads `inputs`, writes under `outputs[k].uri`.

        Implementations add facts to `outputs[k].properties`; `execute`
        records them.

        Args:
          inputs: input artifacts by key (optional ones may be absent).
          outputs: output artifacts by key, their URIs already chosen.
          config: an instance of `SPEC.config_type`.
        """
        raise NotImplementedError

    def check_rewrite(self, uri: str, config: Any) -> None:
        """Whether `execute` may rewrite the complete artifact at `uri`.

        Called before its commit marker is retracted; the default allows
        it (components that resume or overwrite cleanly). Raise to refuse.

        Args:
          uri: an output URI that holds `_artifact.json`.
          config: the execution's config.
        """
        del uri, config


def _by_objstore(path: str) -> bool:
    # Local disk and gs:// go through objstore (fsync, emulator); other
    # filesystems TensorFlow knows (ram://, s3://) through tf.io.gfile.
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
    """Whether `uri` holds a committed artifact (its `_artifact.json`)."""
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


def execute(
    component: Component,
    inputs: Mapping[str, Artifact],
    output_uris: Mapping[str, str],
    config: Any,
) -> dict[str, Artifact]:
    """Checks the contract, runs the component and records the execution.

    Args:
      component: the component to run.
      inputs: input artifacts by key.
      output_uris: the root directory for each output key.
      config: the execution properties, an instance of
        `component.SPEC.config_type`.

    Returns:
      The output artifacts with the properties the component set.

    Raises:
      ArtifactError: an input is missing or of the wrong type, or an output
        key is missing.
      TypeError: `config` is not the spec's config type.
    """
    spec = component.SPEC
    if not isinstance(config, spec.config_type):
        raise TypeError(
            f"{spec.name} takes a {spec.config_type.__name__} config, got "
            f"{type(config).__name__}."
        )
    for key, type_name in spec.inputs.items():
        if key not in inputs:
            if key in spec.optional_inputs:
                continue
            raise ArtifactError(f"{spec.name} needs the input {key!r}.")
        if inputs[key].type_name != type_name:
            raise ArtifactError(
                f"{spec.name} input {key!r} must be a {type_name}, got a "
                f"{inputs[key].type_name} at {inputs[key].uri}."
            )
    unknown = set(inputs) - set(spec.inputs)
    if unknown:
        raise ArtifactError(f"{spec.name} has no inputs {sorted(unknown)}.")
    if set(output_uris) != set(spec.outputs):
        raise ArtifactError(
            f"{spec.name} writes the outputs {sorted(spec.outputs)}, got "
            f"URIs for {sorted(output_uris)}."
        )
    outputs = {
        key: Artifact(spec.outputs[key], uri)
        for key, uri in output_uris.items()
    }
    for artifact in outputs.values():
        if is_complete(artifact.uri):
            component.check_rewrite(artifact.uri, config)
        retract(artifact.uri)
        if not objstore.is_remote(artifact.uri):
            tf.io.gfile.makedirs(artifact.uri)  # No directories on gs://.
    started = time.time()
    component.run(inputs, outputs, config)
    finished = time.time()
    record = {
        "component": spec.name,
        # Configs holding secrets (Beam options) record a redacted copy.
        "config": config_to_json(getattr(config, "redacted", lambda: config)()),
        "inputs": {k: a.to_json() for k, a in inputs.items()},
        "outputs": {k: a.to_json() for k, a in outputs.items()},
        "started": _iso(started),
        "finished": _iso(finished),
        "seconds": round(finished - started, 3),
    }
    for artifact in outputs.values():
        artifact.properties.setdefault("producer", spec.name)
        write_json(os.path.join(artifact.uri, EXECUTION_FILE), record)
        artifact.write()  # The commit marker, last.
    return outputs


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


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """Returns `config` with fields replaced, recursing into sub-configs.

    Args:
      config: a dataclass instance.
      overrides: field values by name; a dotted name ("optimizer.lr") or a
        nested mapping reaches into sub-configs. String values are parsed
        to the field's type ("5e-5" for a float, "true" for a bool, JSON
        lists for tuples and dicts).

    Returns:
      A new config.

    Raises:
      ValueError: an unknown field, or a value that does not parse.
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, Mapping) and isinstance(nested.get(head), dict):
            nested[head].update(value)
        else:
            nested[head] = value
    fields = {f.name for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes = {}
    for name, value in nested.items():
        if name not in fields:
            raise ValueError(
                f"{type(config).__name__} has no field {name!r}; known: "
                f"{sorted(fields)}."
            )
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[name] = apply_overrides(current, value)
        else:
            changes[name] = _coerce(value, hints[name], name)
    return dataclasses.replace(config, **changes)


def parse_override_flags(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parses `--config_override=a.b=value` strings into a mapping."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"--config_override={item!r}: expected field.path=value."
            )
        out[key.strip()] = value
    return out


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Parses `value` to the type `hint` names (strings from flags)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value == "None"):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if isinstance(value, str) and hint is not str:
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            if hint is bool and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            else:
                raise ValueError(f"{name}: cannot parse {value!r}.") from e
    try:
        if hint is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple:
            return tuple(value)
        if origin is dict:
            return dict(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {value!r} is not a {hint}.") from e
    return value


def _type_hints(config_type: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_type)
    except Exception:  # Unresolvable forward references: no recursion.
        return {}


def write_json(path: str, data: Any) -> None:
    """Writes JSON atomically on local disk (fsynced temp file, renamed), on
    gs:// (one upload) and elsewhere (temp file, renamed), so a kill leaves
    the old or the new content."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    if _by_objstore(path):
        objstore.write_atomic(path, text.encode())
        return
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path: str) -> Any:
    """Reads a JSON file, naming it in the error when it is not JSON."""
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from e


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).isoformat()
