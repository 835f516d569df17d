"""The source contract and helpers shared by the four source modes.

A source has two halves:

- `plan()` runs in the driver before the pipeline starts. It checks that
  every input exists (a missing path or an empty pattern fails here, with
  the flag named), fixes the classes and their indices, the output splits,
  and cuts the work into small picklable *units* (a class folder, a tar, a
  byte range of a manifest, a slice of a TFDS split).
- `read(unit)` runs in the Beam workers and yields the unit's entries:
  `(records.ITEM, item)` for each image to convert, or
  `(records.REJECT, reject)` for an entry that is bad before decoding.
  Every entry a unit yields counts as discovered, so the pipeline can
  assert written + rejected == discovered.

Sources are pickled into the workers, so they hold plain data only.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import posixpath
import re
import stat
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf

from components.example_gen import config as config_lib
from components.example_gen import records, spans

Entry = tuple[str, dict[str, Any]]

# The salt of the held-out validation hash. Fixed (not the shuffle seed),
# so that the validation images stay the same whatever seed a run uses.
HOLDOUT_SALT = "example_gen/validation"

_SYNSET = re.compile(r"n\d{8}")


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """One entry of the label map."""

    index: int
    name: str
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        data = {"index": self.index, "name": self.name}
        if _SYNSET.fullmatch(self.name):
            data["synset"] = self.name
        if self.description:
            data["description"] = self.description
        return data


@dataclasses.dataclass
class Plan:
    """What the pipeline will do, fixed before it starts.

    Attributes:
      classes: the label map, in index order.
      splits: the output split names.
      units: picklable work units for `Source.read`, each a dict with an
        `id`.
      multi_label: records may hold several labels.
      with_scores: records hold `image/class/score`.
      inputs: the resolved inputs, for the metadata.
      notes: facts worth recording (ignored folders, unmatched labels...).
    """

    classes: list[ClassInfo]
    splits: tuple[str, ...]
    units: list[dict[str, Any]]
    multi_label: bool = False
    with_scores: bool = False
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ResolvedInputs:
    """The inputs with `{SPAN}`/`{VERSION}` filled in."""

    input: spans.ResolvedPattern
    validation_input: spans.ResolvedPattern | None = None


class Source(abc.ABC):
    """Base class of the source modes (see the module docstring)."""

    def __init__(
        self, config: config_lib.ExampleGenConfig, resolved: ResolvedInputs
    ):
        self.config = config
        self.resolved = resolved

    @abc.abstractmethod
    def plan(self) -> Plan:
        """Checks the inputs and plans the work (driver side).

        Raises:
          ValueError: an input is missing or empty; names the flag.
        """

    @abc.abstractmethod
    def read(self, unit: dict[str, Any]) -> Iterator[Entry]:
        """Yields the entries of one unit (worker side)."""


def require_dir(path: str, flag: str) -> str:
    """Returns `path` if it is an existing directory; raises otherwise."""
    if not path:
        raise ValueError(f"--{flag} is required for this source.")
    if not tf.io.gfile.isdir(path):
        what = "does not exist" if not tf.io.gfile.exists(path) else "is a file"
        raise ValueError(f"--{flag}={path}: the directory {what}.")
    return path


def require_file(path: str, flag: str) -> str:
    """Returns `path` if it is an existing file; raises otherwise."""
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise ValueError(f"--{flag}={path}: no such file.")
    return path


def require_glob(pattern: str, flag: str) -> list[str]:
    """The sorted files matching `pattern`; raises if there are none."""
    if not pattern:
        raise ValueError(f"--{flag} is required for this source.")
    matches = sorted(
        p for p in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(p)
    )
    if not matches:
        raise ValueError(f"--{flag}={pattern}: matches no file.")
    return matches


def read_text_lines(path: str, flag: str) -> list[str]:
    """The stripped, non-empty, non-comment lines of a text file."""
    require_file(path, flag)
    with tf.io.gfile.GFile(path, "r") as f:
        lines = [line.strip() for line in f.read().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def split_name_line(line: str) -> tuple[str, str]:
    """`name<TAB>rest` or `name rest` -> (name, rest)."""
    name, sep, rest = line.partition("\t")
    if not sep:
        name, _, rest = line.partition(" ")
    return name.strip(), rest.strip()


def read_class_list(path: str, flag: str) -> list[str]:
    """Class names, one per line (a description after it is ignored).

    Raises:
      ValueError: the file is missing or empty, or repeats a name.
    """
    names = [split_name_line(line)[0] for line in read_text_lines(path, flag)]
    if not names:
        raise ValueError(f"--{flag}={path}: the file lists no class.")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"--{flag}={path}: {name!r} is listed twice.")
        seen.add(name)
    return names


def read_descriptions(path: str, flag: str) -> dict[str, str]:
    """`name -> description` from `name<TAB or space>description` lines."""
    if not path:
        return {}
    return dict(split_name_line(line) for line in read_text_lines(path, flag))


def make_classes(
    names: Sequence[str], descriptions: dict[str, str]
) -> list[ClassInfo]:
    """The label map for `names` in index order."""
    return [
        ClassInfo(i, name, descriptions.get(name, ""))
        for i, name in enumerate(names)
    ]


def holdout(names: Sequence[str], per_class: int, fraction: float) -> set[str]:
    """The names held out for validation, by a stable hash of each name.

    Listing order never matters: membership depends on the name alone
    (fraction) or on the name's rank by hash within its class (count).

    Args:
      names: the file names of one class.
      per_class: hold out this many (at most half of the class).
      fraction: when > 0, hold out names whose hash falls below it.

    Returns:
      The held-out subset of `names`.
    """
    if fraction > 0:
        return {
            n
            for n in names
            if records.unit_interval(HOLDOUT_SALT, n) < fraction
        }
    count = min(per_class, len(names) // 2)
    ranked = sorted(
        names, key=lambda n: (records.stable_hash(HOLDOUT_SALT, n), n)
    )
    return set(ranked[:count])


def is_unsafe_member(name: str) -> bool:
    """An archive member path that is absolute or climbs out (`..`)."""
    path = name.replace("\\", "/")
    if not path or path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return True
    return ".." in path.split("/")


def escape_bytes(raw: bytes) -> str:
    """A file name's bytes as text: UTF-8 as is, else %-escaped.

    Names that are not UTF-8 (Latin-1 names are common in old tars and
    folders) cannot be written as text; each byte that is not printable
    ASCII, and `%` itself, becomes `%XX`, which
    `urllib.parse.unquote_to_bytes` reverses.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(
            chr(b) if 0x20 < b < 0x7F and b != 0x25 else f"%{b:02X}"
            for b in raw
        )


def escape_name(name: str) -> str:
    """`escape_bytes` of a name decoded with `surrogateescape`."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return escape_bytes(name.encode("utf-8", "surrogateescape"))


def is_local(path: str | bytes) -> bool:
    """A local path (no URI scheme), or the raw bytes of one."""
    return isinstance(path, bytes) or "://" not in path


def _raise(error: OSError) -> None:
    raise error  # os.walk would skip an unreadable folder in silence.


def list_files(directory: str | bytes) -> list[tuple[str, str | bytes]]:
    """All files under `directory` (recursively), sorted.

    Local folders are listed with `os.walk` on bytes, because
    `tf.io.gfile` raises on a name that is not UTF-8.

    Args:
      directory: a folder, or the raw bytes of a local folder's path.

    Returns:
      (relative name, path to read) pairs. The name is escaped when it is
      not UTF-8 (`escape_bytes`), and the path is then the raw bytes of
      the local path, which `read_limited` opens.

    Raises:
      OSError: a local folder cannot be listed.
    """
    found = []
    if is_local(directory):
        top = os.fsencode(directory)
        for root, _, files in os.walk(top, onerror=_raise):
            rel_root = os.path.relpath(root, top)
            for name in files:
                raw = name if rel_root == b"." else os.path.join(rel_root, name)
                full = os.path.join(top, raw)
                rel = escape_bytes(raw)
                if rel.encode("utf-8") == raw:
                    full = full.decode("utf-8")
                found.append((rel, full))
        return sorted(found)
    for root, _, files in tf.io.gfile.walk(directory):
        rel_root = os.path.relpath(root.rstrip("/"), directory.rstrip("/"))
        for name in files:
            rel = name if rel_root == "." else posixpath.join(rel_root, name)
            found.append((rel, posixpath.join(directory, rel)))
    return sorted(found)


def list_subdirs(directory: str) -> list[tuple[str, str | bytes]]:
    """The immediate subdirectories, sorted: (name, path) pairs.

    Names that are not UTF-8 are escaped and their path is bytes, as in
    `list_files`.
    """
    found = []
    if is_local(directory):
        top = os.fsencode(directory)
        for raw in os.listdir(top):
            full = os.path.join(top, raw)
            if os.path.isdir(full):
                name = escape_bytes(raw)
                if name.encode("utf-8") == raw:
                    full = full.decode("utf-8")
                found.append((name, full))
        return sorted(found)
    for entry in tf.io.gfile.listdir(directory):
        name = entry.rstrip("/")
        path = posixpath.join(directory, name)
        if tf.io.gfile.isdir(path):
            found.append((name, path))
    return sorted(found)


def read_limited(path: str | bytes, max_bytes: int) -> bytes:
    """Reads at most `max_bytes + 1` bytes (enough to see it is too big).

    A bytes `path` is a local file whose name is not UTF-8.
    """
    if isinstance(path, bytes):
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(max_bytes + 1)


def _message(error: Exception) -> str:
    return f"{type(error).__name__}: {getattr(error, 'message', error)}"


def read_item(item: dict[str, Any], max_bytes: int) -> bytes | dict[str, Any]:
    """An item's bytes, or a reject when its file cannot be read.

    Args:
      item: an item (`records.make_item`) with inline `data` or a `path`.
      max_bytes: read at most this many bytes and one more.

    Returns:
      The bytes, or a reject (missing, not a regular file, unsupported
      file system, unreadable).
    """
    if item["data"] is not None:
        return item["data"]
    split, where, path = item["split"], item["source"], item["path"]
    try:
        if is_local(path):
            # A FIFO or device would block or stream forever.
            if not stat.S_ISREG(os.stat(path).st_mode):
                return records.make_reject(
                    split, where, records.NOT_A_FILE, "not a regular file"
                )
        return read_limited(path, max_bytes)
    except (tf.errors.NotFoundError, FileNotFoundError) as e:
        return records.make_reject(
            split, where, records.MISSING_FILE, _message(e)
        )
    except (tf.errors.FailedPreconditionError, IsADirectoryError) as e:
        return records.make_reject(
            split, where, records.NOT_A_FILE, _message(e)
        )
    except tf.errors.UnimplementedError as e:  # No such file system.
        return records.make_reject(
            split, where, records.UNSUPPORTED_SCHEME, _message(e)
        )
    except (
        tf.errors.PermissionDeniedError,
        tf.errors.DataLossError,
        tf.errors.InvalidArgumentError,
        tf.errors.OutOfRangeError,
        OSError,
        ValueError,
    ) as e:
        return records.make_reject(
            split, where, records.UNREADABLE_FILE, _message(e)
        )
    # Other errors (unavailable, deadline, ...) propagate: the runner
    # retries the bundle rather than dropping images on a hiccup.
