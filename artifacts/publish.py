"""Publishing a SavedModel as a TF Serving version that survives kill -9.

A version `<model_dir>/<N>/` counts as pushed only when it holds the
completion marker `_PUSHED` (JSON: the SavedModel's fingerprint and file
list), written after everything else. TF Serving ignores the marker (it
loads `<N>/saved_model.pb` and the files beside it) and ignores non-numeric
siblings such as the staging prefix.

- gs:// (through `storage.objstore`, the one place that talks to object
  stores): the SavedModel is first uploaded to a staging prefix
  `<model_dir>/.staging-<token>/` (not a version number, so no server
  looks at it), then copied server-side to `<model_dir>/<N>/` with
  `saved_model.pb` last (a server loads a version only once it appears,
  and then finds every other file there), then `_PUSHED` is written and
  the staging prefix deleted.
- Local disk (and other filesystems tf.io.gfile knows): the version is
  assembled in a hidden temporary directory and renamed into place
  (`model_store.write_version`), then marked.

A push killed at any point leaves either nothing servable, or a complete
servable version without its marker. The next push, for the newest
version without a marker: completes it (writes the marker) when it holds
this very SavedModel with `saved_model.pb`; deletes it and reuses its
number when it has no `saved_model.pb` (never loadable); and leaves it
alone, taking the next number, when it is another complete model. Staging
and temporary leftovers are deleted. So a partial version is never taken
for pushed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid

import tensorflow as tf
from tensorflow.core.protobuf import fingerprint_pb2

from artifacts import model_store
from storage import objstore

PUSHED_MARKER = "_PUSHED"
FINGERPRINT_PB = "fingerprint.pb"
STAGING_PREFIX = ".staging-"
# What the SavedModel's fingerprint hashes (its uuid differs per save).
_FINGERPRINT_FIELDS = (
    "graph_def_program_hash",
    "signature_def_hash",
    "saved_object_graph_hash",
    "checkpoint_hash",
)


@dataclasses.dataclass(frozen=True)
class Published:
    """What `push` did.

    Attributes:
      version: the version now holding the model.
      destination: its directory.
      action: "pushed", "completed" (a killed push's version finished),
        or "unchanged" (already the newest complete version).
    """

    version: int
    destination: str
    action: str


def _read(path: str) -> bytes | None:
    if objstore.is_remote(path) or "://" not in path:
        found = objstore.read(path)
        return None if found is None else found.data
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    if objstore.is_remote(path) or "://" not in path:
        objstore.write_atomic(path, data)
        return
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def exists(path: str) -> bool:
    """Whether a file exists (gs:// through objstore)."""
    if objstore.is_remote(path):
        return objstore.exists(path)
    return tf.io.gfile.exists(path)


def _children(model_dir: str) -> list[str]:
    if objstore.is_remote(model_dir):
        return objstore.list_children(model_dir)
    if not tf.io.gfile.isdir(model_dir):
        return []
    return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(model_dir))


def _delete_tree(path: str) -> None:
    if objstore.is_remote(path):
        objstore.delete_tree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def fingerprint(saved_model: str) -> dict[str, int] | None:
    """The SavedModel's content hashes from its fingerprint.pb, or None."""
    data = _read(os.path.join(saved_model, FINGERPRINT_PB))
    if data is None:
        return None
    proto = fingerprint_pb2.FingerprintDef.FromString(data)
    return {name: getattr(proto, name) for name in _FINGERPRINT_FIELDS}


def list_versions(model_dir: str) -> list[int]:
    """Integer version directories, complete or not, ascending."""
    return sorted(int(n) for n in _children(model_dir) if n.isdigit())


def is_pushed(version_dir: str) -> bool:
    """Whether the version's completion marker is there."""
    return exists(os.path.join(version_dir, PUSHED_MARKER))


def pushed_fingerprint(version_dir: str) -> dict[str, int] | None:
    """The fingerprint recorded by a complete push, or None."""
    data = _read(os.path.join(version_dir, PUSHED_MARKER))
    if data is None:
        return None
    try:
        return json.loads(data)["fingerprint"]
    except (ValueError, KeyError):
        return None  # A damaged marker: not a complete push.


def _mark(version_dir: str, print_: dict[str, int], files: list[str]) -> None:
    marker = {"fingerprint": print_, "files": files}
    _write(
        os.path.join(version_dir, PUSHED_MARKER),
        json.dumps(marker, sort_keys=True).encode(),
    )


def clean_leftovers(model_dir: str) -> list[str]:
    """Deletes staging prefixes and temporary directories of killed pushes.

    The pipeline's lock serializes pushes, so none of them is live.

    Returns:
      The names deleted.
    """
    doomed = [
        name
        for name in _children(model_dir)
        if name.startswith((STAGING_PREFIX, model_store.TMP_PREFIX))
    ]
    for name in doomed:
        _delete_tree(os.path.join(model_dir, name))
    return doomed


def push(
    model_dir: str, saved_model: str, use_timestamp: bool = False
) -> Published:
    """Publishes `saved_model` as the newest version, or finds it there.

    Args:
      model_dir: `<serving_base>/<model name>`.
      saved_model: the SavedModel directory (with fingerprint.pb).
      use_timestamp: TFX's UNIX_TIMESTAMP versioning.

    Returns:
      The version and what was done.

    Raises:
      ValueError: `saved_model` has no saved_model.pb or fingerprint.pb.
    """
    source_print = fingerprint(saved_model)
    if source_print is None or not exists(
        os.path.join(saved_model, model_store.SAVED_MODEL_PB)
    ):
        raise ValueError(
            f"{saved_model} is not a SavedModel with a {FINGERPRINT_PB}; "
            "re-run the Exporter."
        )
    clean_leftovers(model_dir)
    versions = list_versions(model_dir)
    reuse = None
    if versions:
        newest = versions[-1]
        newest_dir = os.path.join(model_dir, str(newest))
        if is_pushed(newest_dir):
            if pushed_fingerprint(newest_dir) == source_print:
                return Published(newest, newest_dir, "unchanged")
        elif exists(os.path.join(newest_dir, model_store.SAVED_MODEL_PB)):
            # saved_model.pb goes last: everything else is there.
            if fingerprint(newest_dir) == source_print:
                _mark(newest_dir, source_print, _files(newest_dir))
                return Published(newest, newest_dir, "completed")
        else:
            # Never loadable: a push killed before saved_model.pb.
            _delete_tree(newest_dir)
            reuse = newest
    if reuse is not None:
        version = reuse
    elif use_timestamp:
        version = max(int(time.time()), max(versions, default=0) + 1)
    else:
        version = max(versions, default=0) + 1
    destination = os.path.join(model_dir, str(version))
    if objstore.is_remote(model_dir):
        _publish_remote(model_dir, saved_model, destination)
    else:
        model_store.write_version(model_dir, saved_model, version)
    _mark(destination, source_print, _files(destination))
    return Published(version, destination, "pushed")


def _files(directory: str) -> list[str]:
    if objstore.is_remote(directory) or "://" not in directory:
        return [p for p in objstore.list_tree(directory) if p != PUSHED_MARKER]
    found = []
    for dirpath, _, names in tf.io.gfile.walk(directory):
        relative = os.path.relpath(dirpath, directory)
        found += [n if relative == "." else f"{relative}/{n}" for n in names]
    return sorted(p for p in found if p != PUSHED_MARKER)


def _publish_remote(model_dir: str, saved_model: str, destination: str) -> None:
    """Upload to a staging prefix, then copy with saved_model.pb last."""
    staging = os.path.join(model_dir, STAGING_PREFIX + uuid.uuid4().hex[:12])
    objstore.copy_tree(saved_model, staging)
    objstore.copy_tree(staging, destination, last=(model_store.SAVED_MODEL_PB,))
    objstore.delete_tree(staging)


def prune(model_dir: str, keep: int, protect: int | None = None) -> list[int]:
    """Deletes all but the newest `keep` versions (0: keep all).

    Args:
      model_dir: `<serving_base>/<model name>`.
      keep: versions to keep.
      protect: a version never deleted (the one just pushed).

    Returns:
      The deleted versions.
    """
    if keep <= 0:
        return []
    doomed = [v for v in list_versions(model_dir)[:-keep] if v != protect]
    for version in doomed:
        _delete_tree(os.path.join(model_dir, str(version)))
    return doomed
