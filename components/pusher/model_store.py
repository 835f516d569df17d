"""TF Serving's model store: `<base>/<model name>/<integer version>/`.

TF Serving polls the model directory and loads any integer-named child.
A version must therefore never be visible half-written:

- On a local filesystem the SavedModel is copied into a hidden temporary
  directory `.tmp-<version>-<pid>` in the same parent (not an integer, so
  the server ignores it) and renamed into place, which is atomic.
- On object stores (gs://) there is no atomic directory rename, so files
  are copied straight into the version directory with `saved_model.pb`
  last: the server (and `serving.servables`) treats a version without it
  as not there yet. This is TFX's Pusher's order too.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

SAVED_MODEL_PB = "saved_model.pb"
TMP_PREFIX = ".tmp-"


def list_versions(model_dir: str) -> list[int]:
    """Integer version directories under `model_dir`, ascending.

    Counts every integer-named directory, finished or not, so a new
    version number never collides with one being written.
    """
    if not tf.io.gfile.isdir(model_dir):
        return []
    return sorted(
        int(name.rstrip("/"))
        for name in tf.io.gfile.listdir(model_dir)
        if name.rstrip("/").isdigit()
    )


def next_version(model_dir: str, use_timestamp: bool = False) -> int:
    """The version to push next.

    Args:
      model_dir: `<base>/<model name>`.
      use_timestamp: TFX's UNIX_TIMESTAMP versioning; bumped past the
        newest existing version if the clock is behind it.

    Returns:
      max(existing) + 1, or the timestamp.
    """
    newest = max(list_versions(model_dir), default=0)
    if use_timestamp:
        return max(int(time.time()), newest + 1)
    return newest + 1


def copy_tree(src: str, dst: str, last: str = SAVED_MODEL_PB) -> None:
    """Copies a directory tree file by file, the file named `last` last.

    Args:
      src: the source directory (local or gs://).
      dst: the destination directory; created.
      last: the top-level file copied after everything else.
    """
    deferred = None
    for directory, _, files in tf.io.gfile.walk(src):
        relative = os.path.relpath(directory, src)
        target = dst if relative == "." else os.path.join(dst, relative)
        tf.io.gfile.makedirs(target)
        for name in files:
            if relative == "." and name == last:
                deferred = (os.path.join(directory, name), target)
                continue
            tf.io.gfile.copy(
                os.path.join(directory, name),
                os.path.join(target, name),
                overwrite=True,
            )
    if deferred is not None:
        source, target = deferred
        tf.io.gfile.copy(source, os.path.join(target, last), overwrite=True)


def write_version(model_dir: str, saved_model: str, version: int) -> str:
    """Publishes a SavedModel as `<model_dir>/<version>`, never half-seen.

    Args:
      model_dir: `<base>/<model name>`.
      saved_model: the SavedModel directory to publish.
      version: the version number; must not exist yet.

    Returns:
      The version directory.

    Raises:
      FileExistsError: the version directory exists already.
      ValueError: `saved_model` holds no saved_model.pb.
    """
    if not tf.io.gfile.exists(os.path.join(saved_model, SAVED_MODEL_PB)):
        raise ValueError(f"{saved_model} is not a SavedModel.")
    final = os.path.join(model_dir, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"Version directory {final} already exists.")
    tf.io.gfile.makedirs(model_dir)
    if "://" in model_dir:
        copy_tree(saved_model, final)
        return final
    tmp = os.path.join(model_dir, f"{TMP_PREFIX}{version}-{os.getpid()}")
    try:
        copy_tree(saved_model, tmp)
        os.rename(tmp, final)  # Atomic within one local filesystem.
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    return final


def same_model(version_dir: str, saved_model: str) -> bool:
    """Whether two SavedModels hold the same graph, signatures and weights.

    Compares TF's SavedModel fingerprints (`fingerprint.pb`: hashes of the
    graph, signatures, object graph and checkpoint), not the per-save UUID.
    """
    try:
        a = tf.saved_model.experimental.read_fingerprint(version_dir)
        b = tf.saved_model.experimental.read_fingerprint(saved_model)
    except (FileNotFoundError, tf.errors.NotFoundError, ValueError):
        return False
    return a.singleprint() == b.singleprint()


def prune(model_dir: str, keep: int, protect: int | None = None) -> list[int]:
    """Deletes all but the newest `keep` versions.

    Args:
      model_dir: `<base>/<model name>`.
      keep: versions to keep (0 or less: keep all).
      protect: a version never deleted (the one just pushed).

    Returns:
      The deleted versions.
    """
    if keep <= 0:
        return []
    versions = list_versions(model_dir)
    doomed = [v for v in versions[:-keep] if v != protect]
    for version in doomed:
        tf.io.gfile.rmtree(os.path.join(model_dir, str(version)))
    return doomed
