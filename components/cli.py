"""Shared plumbing for the thin component and pipeline binaries.

`bazel run` starts a binary inside its runfiles tree, so relative paths the
user typed must be resolved against the directory the user ran from
(`BUILD_WORKING_DIRECTORY`), and defaults must point outside both the source
tree and the runfiles.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from absl import flags

from artifacts.core import resolve_user_path
from components import base

# Where outputs go when the user names none: outside the source tree.
DEFAULT_HOME_ENV = "COATNET_HOME"


def default_home() -> str:
    """The default root for outputs: $COATNET_HOME or ~/coatnet_runs."""
    home = os.environ.get(DEFAULT_HOME_ENV)
    if home:
        return resolve_user_path(home)
    return os.path.join(os.path.expanduser("~"), "coatnet_runs")


def check_output_location(path: str, flag: str) -> str:
    """Refuses output paths inside the runfiles tree or the source tree.

    Args:
      path: the resolved output path.
      flag: the flag that named it, for the error message.

    Returns:
      `path`, when it is acceptable.

    Raises:
      ValueError: `path` lies inside the runfiles or the workspace sources.
    """
    if "://" in path:
        return path
    real = os.path.realpath(path)
    forbidden = {
        "the runfiles tree": os.environ.get("RUNFILES_DIR"),
        "the source tree": os.environ.get("BUILD_WORKSPACE_DIRECTORY"),
    }
    for what, root in forbidden.items():
        if root and (
            real == os.path.realpath(root)
            or real.startswith(os.path.realpath(root) + os.sep)
        ):
            raise ValueError(
                f"--{flag}={path} is inside {what} ({root}); choose a "
                "directory outside it, e.g. ~/coatnet_runs/..."
            )
    return path


def read_input_artifact(uri: str, type_name: str, flag: str) -> base.Artifact:
    """Reads an input artifact named by a flag, with a flag-naming error.

    Args:
      uri: what the user passed (resolved here).
      type_name: the artifact type expected.
      flag: the flag's name.

    Returns:
      The artifact.

    Raises:
      ValueError: the flag is empty or does not point at such an artifact.
    """
    if not uri:
        raise ValueError(f"--{flag} is required: the {type_name} artifact.")
    try:
        return base.Artifact.read(resolve_user_path(uri), type_name)
    except base.ArtifactError as e:
        raise ValueError(f"--{flag}: {e}") from e


def read_input_artifacts(
    flags_by_input: Mapping[str, tuple[Any, str]],
    optional: Collection[str] = (),
) -> dict[str, base.Artifact]:
    """Reads the input artifacts a component binary's flags name.

    Args:
      flags_by_input: {input key: (absl flag holder, artifact type)}.
      optional: input keys that may be left out: their flag is empty.

    Returns:
      {input key: artifact}, without the optional inputs not given.

    Raises:
      ValueError: a required flag is empty, or a flag does not point at
        an artifact of its type (`read_input_artifact`).
    """
    return {
        key: read_input_artifact(holder.value, type_name, holder.name)
        for key, (holder, type_name) in flags_by_input.items()
        if holder.value or key not in optional
    }


def component_config(
    config_class: type, values: Mapping[str, Any], set_items: Sequence[str]
) -> Any:
    """A component's typed config: `values`, then the --set overrides.

    Args:
      config_class: the config dataclass.
      values: fields from --config_file and the binary's own flags.
      set_items: the --set flag's "field=value" items.

    Returns:
      The validated config.

    Raises:
      ValueError: an unknown field, a bad value or a malformed --set.
    """
    return base.apply_overrides(
        base.config_from_json(config_class, values),
        parse_set_flags(set_items),
    )


def load_config_overrides(path: str) -> Mapping[str, Any]:
    """Reads a JSON config file named by --config_file ({} when empty)."""
    if not path:
        return {}
    path = resolve_user_path(path)
    try:
        return base.read_json(path)
    except (OSError, base.ArtifactError) as e:
        raise ValueError(f"--config_file={path}: {e}") from e


def parse_set_flags(items: Sequence[str], flag: str = "set") -> dict[str, str]:
    """Parses repeated `--set=a.b=value` items into dotted overrides.

    Args:
      items: the flag's values.
      flag: the flag's name, for the error message.

    Returns:
      {dotted field path: value text}, later items winning.

    Raises:
      ValueError: an item without "=" or without a field path.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--{flag}={item!r}: expected field.path=value.")
        out[key.strip()] = value
    return out


# Old flag spellings: {old name: new name}, filled by define_renamed_flag.
_RENAMED: dict[str, str] = {}


def define_renamed_flag(
    old: str, new: str, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Keeps `--old` working as an alias of the already defined `--new`.

    The binaries share one spelling (--config_file, --set, --output); the
    old names still parse, and `apply_renamed_flags` moves their values
    over and says what to use instead.

    Args:
      old: the old flag name.
      new: the name of a flag defined before this call.
      flag_values: the registry both live in.
    """
    target = flag_values[new]
    help_text = f"Old spelling of --{new}; use --{new}."
    if isinstance(target, flags.MultiFlag):
        flags.DEFINE_multi_string(old, [], help_text, flag_values=flag_values)
    elif isinstance(target.default, bool) or target.flag_type() == "bool":
        flags.DEFINE_bool(old, None, help_text, flag_values=flag_values)
    else:
        flags.DEFINE_string(old, None, help_text, flag_values=flag_values)
    _RENAMED[old] = new


def forget_renamed_flag(name: str) -> None:
    """Drops `--name` from the aliases (its flag was removed or redefined).

    Args:
      name: an old spelling, or a new name whose aliases go too.
    """
    _RENAMED.pop(name, None)
    for old, new in list(_RENAMED.items()):
        if new == name:
            del _RENAMED[old]


def apply_renamed_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
    warn: Any = None,
) -> list[str]:
    """Moves the values of old flag spellings to the new flags.

    A repeated flag's old values are added to the new one's; a single
    value fills the new flag unless that was given too (then the new one
    wins).

    Args:
      flag_values: the parsed registry.
      warn: receives one message per old spelling used (default: stderr).

    Returns:
      The messages.
    """
    messages = []
    for old, new in _RENAMED.items():
        if old not in flag_values:
            continue
        value = flag_values[old].value
        if value is None or value == []:
            continue
        target = flag_values[new]
        if isinstance(target, flags.MultiFlag):
            target.value = list(target.value or []) + list(value)
        elif not target.present:
            if isinstance(value, str):
                target.parse(value)  # Sets the value and marks it present.
            else:
                target.value = value
                target.present = 1
        flag_values[old].value = flag_values[old].default
        flag_values[old].present = 0
        messages.append(f"--{old} is an old spelling; use --{new} instead.")
    for message in messages:
        (warn or _stderr)(message)
    return messages


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def print_outputs(outputs: Mapping[str, base.Artifact]) -> None:
    """Logs and prints the output artifacts of a finished run."""
    for key, artifact in outputs.items():
        logging.info("%s -> %s", key, artifact.uri)
        print(
            json.dumps(
                {"output": key, **artifact.to_json()}, default=str, indent=1
            )
        )


def given(flags_by_field: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields from the flags the user gave (a None value: not given).

    Args:
      flags_by_field: absl flag holders by config field name.

    Returns:
      {field: flag value} for the flags whose value is not None.
    """
    return {
        name: holder.value
        for name, holder in flags_by_field.items()
        if holder.value is not None
    }


def run_component(
    component: base.Component,
    inputs: Mapping[str, base.Artifact],
    config: Any,
    output_dir: str,
    outputs: Sequence[str],
) -> dict[str, base.Artifact]:
    """Runs a component binary's one execution and prints its outputs.

    Args:
      component: the component.
      inputs: its input artifacts.
      config: its typed config.
      output_dir: --output as typed; empty: a new directory
        `<home>/<Component>/<time>` (`default_home`).
      outputs: the output keys; each artifact goes to `<output_dir>/<key>`.

    Returns:
      The output artifacts by key.

    Raises:
      ValueError: `output_dir` lies inside the runfiles or source tree.
    """
    output_dir = resolve_user_path(output_dir) or os.path.join(
        default_home(),
        component.SPEC.name,
        time.strftime("%Y%m%d-%H%M%S"),
    )
    check_output_location(output_dir, "output")
    result = base.execute(
        component,
        inputs,
        {key: os.path.join(output_dir, key) for key in outputs},
        config,
    )
    print_outputs(result)
    return result
