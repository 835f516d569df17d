"""The component contract every component follows (mirrors TFX, no TFX).

A component is a library with

- a `ComponentSpec`: its name, its typed input and output artifacts, and the
  dataclass type of its execution properties (its typed config);
- a `run(inputs, outputs, config)` entry point that reads the input
  artifacts, writes the output artifacts under their URIs and fills in their
  properties;
- a thin CLI (an absl `main`) that builds the config from flags and calls
  `execute`.

Artifacts, their types and their JSON records belong to the artifacts layer
(`artifacts/core.py`, re-exported here for the components): `execute`
writes `_artifact.json` and `_execution.json` for every output, so a
component run alone leaves the same record as one run by the pipeline.

`_artifact.json` is the commit marker: written last, atomically, after
everything else of the artifact; removed first (`retract`) before anything
is rewritten. A directory without it is partial whatever else it holds, and
the component that owns it cleans it and redoes (or resumes) its work, so a
`kill -9` at any moment leaves the previous complete state or something no
reader takes for complete. A component may refuse to rewrite a complete
artifact (`Component.check_rewrite`), never its own unfinished output.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Union

import tensorflow as tf

from artifacts import core
from artifacts.core import (  # noqa: F401 (the components' names)
    ARTIFACT_FILE,
    ARTIFACT_TYPES,
    EXAMPLES,
    EXECUTION_FILE,
    MODEL,
    MODEL_BLESSING,
    MODEL_EVALUATION,
    PUSHED_MODEL,
    Artifact,
    ArtifactError,
    config_from_json,
    config_to_json,
    is_complete,
    read_json,
    retract,
    write_json,
)
from storage import objstore


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
        core.write_execution(artifact.uri, record)
        artifact.write()  # The commit marker, last.
    return outputs


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


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).isoformat()
