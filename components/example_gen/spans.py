"""Spans and versions in input patterns (TFX ExampleGen's convention).

An input pattern may hold `{SPAN}` (any number of digits) or `{SPAN:N}`
(exactly N digits), and optionally `{VERSION}` / `{VERSION:N}` next to it.
The latest span is processed unless one is named, and within a span the
latest version; the chosen numbers are recorded on the output artifact.
A pattern without `{SPAN}` is span 0, as in TFX.

    /data/jft/span-{SPAN:4}/manifest.jsonl   -> .../span-0007/manifest.jsonl
    gs://b/i21k/{SPAN}/v{VERSION}            -> gs://b/i21k/12/v3
"""

from __future__ import annotations

import dataclasses
import re

import tensorflow as tf

_SPEC = re.compile(r"\{(SPAN|VERSION)(?::(\d+))?\}")
_GLOB_TO_REGEX = {"*": "[^/]*", "?": "[^/]"}


@dataclasses.dataclass(frozen=True)
class ResolvedPattern:
    """A pattern with its span and version filled in.

    Attributes:
      pattern: the concrete path or glob.
      span: the span number (0 when the pattern has no `{SPAN}`).
      version: the version number, or None without `{VERSION}`.
    """

    pattern: str
    span: int
    version: int | None


def has_span(pattern: str) -> bool:
    """Whether `pattern` holds a `{SPAN}` spec."""
    return any(m.group(1) == "SPAN" for m in _SPEC.finditer(pattern))


def _check_specs(pattern: str, flag: str) -> list[re.Match]:
    specs = list(_SPEC.finditer(pattern))
    kinds = [m.group(1) for m in specs]
    if "VERSION" in kinds and "SPAN" not in kinds:
        raise ValueError(f"--{flag}={pattern}: {{VERSION}} needs {{SPAN}}.")
    leftover = _SPEC.sub("", pattern)
    if "{SPAN" in leftover or "{VERSION" in leftover:
        raise ValueError(f"--{flag}={pattern}: malformed {{SPAN}}/{{VERSION}}.")
    return specs


def _to_regex(pattern: str) -> str:
    """A regex matching what `pattern`'s glob matches, specs as groups."""
    out, pos = [], 0
    for m in _SPEC.finditer(pattern):
        out.append(_glob_regex(pattern[pos : m.start()]))
        digits = rf"\d{{{m.group(2)}}}" if m.group(2) else r"\d+"
        out.append(f"(?P<{m.group(1)}{m.start()}>{digits})")
        pos = m.end()
    out.append(_glob_regex(pattern[pos:]))
    return "".join(out)


def _glob_regex(text: str) -> str:
    return "".join(_GLOB_TO_REGEX.get(c, re.escape(c)) for c in text)


def _fill(pattern: str, values: dict[str, str]) -> str:
    return _SPEC.sub(lambda m: values[m.group(1)], pattern)


def find_spans(pattern: str, flag: str = "input") -> dict[tuple[int, int], str]:
    """Lists the (span, version) pairs present for a `{SPAN}` pattern.

    Args:
      pattern: a path or glob holding `{SPAN}` (and maybe `{VERSION}`).
      flag: the flag that gave it, for error messages.

    Returns:
      (span, version or -1) to the matched span/version strings' pattern.

    Raises:
      ValueError: the specs are malformed, or a span appears with two
        spellings (`{SPAN}` used twice with different values).
    """
    specs = _check_specs(pattern, flag)
    glob = _SPEC.sub("*", pattern)
    regex = re.compile(_to_regex(pattern))
    found: dict[tuple[int, int], str] = {}
    for path in tf.io.gfile.glob(glob):
        m = regex.fullmatch(path.rstrip("/"))
        if not m:
            continue
        values: dict[str, str] = {}
        for spec in specs:
            text = m.group(f"{spec.group(1)}{spec.start()}")
            if values.setdefault(spec.group(1), text) != text:
                break
        else:
            key = (int(values["SPAN"]), int(values.get("VERSION", "-1")))
            found[key] = _fill(pattern, values)
    return found


def resolve(
    pattern: str,
    span: int | None = None,
    version: int | None = None,
    flag: str = "input",
) -> ResolvedPattern:
    """Fills in the span and version of an input pattern.

    Args:
      pattern: the input as given; without `{SPAN}` it is returned as is.
      span: the span to use; None = the latest present.
      version: the version within the span; None = the latest present.
      flag: the flag that gave the pattern, for error messages.

    Returns:
      The concrete pattern with its span and version.

    Raises:
      ValueError: nothing matches, the named span/version is absent, or a
        span is named for a pattern without `{SPAN}`; the message names
        the flag and the pattern.
    """
    if not has_span(pattern):
        _check_specs(pattern, flag)
        if span is not None:
            raise ValueError(
                f"--span={span} was given but --{flag}={pattern} has no "
                "{SPAN} in it."
            )
        return ResolvedPattern(pattern, 0, None)
    found = find_spans(pattern, flag)
    if not found:
        raise ValueError(
            f"--{flag}={pattern}: no path matches "
            f"{_SPEC.sub('*', pattern)} with a numeric {{SPAN}}."
        )
    spans = sorted({s for s, _ in found})
    chosen = spans[-1] if span is None else span
    if chosen not in spans:
        raise ValueError(
            f"--span={span}: not found for --{flag}={pattern}; present: "
            f"{spans}."
        )
    versions = sorted(v for s, v in found if s == chosen)
    if version is None:
        chosen_version = versions[-1]
    elif version in versions:
        chosen_version = version
    else:
        raise ValueError(
            f"--version={version}: span {chosen} of --{flag}={pattern} has "
            f"versions {[v for v in versions if v >= 0]}."
        )
    return ResolvedPattern(
        found[(chosen, chosen_version)],
        chosen,
        None if chosen_version < 0 else chosen_version,
    )


def resolve_like(
    pattern: str, resolved: ResolvedPattern, flag: str
) -> ResolvedPattern:
    """Resolves a second input (validation) at the main input's span.

    Args:
      pattern: the second pattern; without `{SPAN}` it is used as is.
      resolved: the main input's resolution.
      flag: the second pattern's flag.

    Returns:
      The second pattern at the same span and version.

    Raises:
      ValueError: that span/version does not exist for `pattern`.
    """
    if not pattern or not has_span(pattern):
        return ResolvedPattern(pattern, resolved.span, resolved.version)
    return resolve(pattern, resolved.span, resolved.version, flag)
