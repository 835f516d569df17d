"""TF Serving's model store: `<base>/<model name>/<integer version>/`.

Written by the Pusher (and by the Exporter's infra-validation, into a
temporary store), read by `serving.servables`. The Pusher's PushedModel
artifact records what it pushed where (`record_push`, `PushedModel`).

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

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from artifacts import core

SAVED_MODEL_PB = "saved_model.pb"
TMP_PREFIX = ".tmp-"
# TF Serving replays these PredictionLogs when it loads a version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit.


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


def ready_versions(model_dir: str) -> list[int]:
    """Version directories whose `saved_model.pb` exists, ascending: the
    versions a server may load (the others are still being written)."""
    return [
        v
        for v in list_versions(model_dir)
        if tf.io.gfile.exists(os.path.join(model_dir, str(v), SAVED_MODEL_PB))
    ]


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


def read_saved_model(export_dir: str) -> saved_model_pb2.SavedModel:
    """The `saved_model.pb` proto of a SavedModel directory."""
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(export_dir, SAVED_MODEL_PB), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def write_saved_model(
    export_dir: str, proto: saved_model_pb2.SavedModel
) -> None:
    """Rewrites the `saved_model.pb` of a SavedModel directory."""
    with tf.io.gfile.GFile(os.path.join(export_dir, SAVED_MODEL_PB), "wb") as f:
        f.write(proto.SerializeToString())


def write_warmup(export_dir: str, logs: Sequence[Any]) -> str:
    """Writes a SavedModel's warmup PredictionLogs (TFRecord).

    Raises:
      ValueError: more records than TF Serving accepts.
    """
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"{len(logs)} warmup records; TF Serving takes at most "
            f"{MAX_WARMUP_RECORDS}."
        )
    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: str) -> list[prediction_log_pb2.PredictionLog]:
    """Reads a SavedModel's warmup records (empty when it has none).

    Raises:
      ValueError: more records than TF Serving accepts.
    """
    path = os.path.join(export_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    logs = []
    for record in tf.data.TFRecordDataset(path):
        if len(logs) == MAX_WARMUP_RECORDS:
            raise ValueError(
                f"More than {MAX_WARMUP_RECORDS} warmup records in {path}."
            )
        logs.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
    return logs


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


@dataclasses.dataclass(frozen=True)
class PushedModel:
    """What a PushedModel artifact says about its push.

    Attributes:
      pushed: whether a version was published (or was already current).
      model_name: the served model's name (`<base>/<model_name>/`).
      version: the pushed version, None when nothing was pushed.
      destination: the version directory, "" when nothing was pushed.
      reason: a sentence for the logs.
    """

    pushed: bool
    model_name: str
    version: int | None
    destination: str
    reason: str

    @classmethod
    def of(cls, artifact: core.Artifact) -> PushedModel:
        """Reads the push from a PushedModel artifact's properties."""
        props = artifact.properties
        version = str(props.get("pushed_version", ""))
        return cls(
            pushed=int(props.get("pushed", 0)) == 1,
            model_name=str(props.get("model_name", "")),
            version=int(version) if version.isdigit() else None,
            destination=str(props.get("pushed_destination", "")),
            reason=str(props.get("reason", "")),
        )

    def record(self, artifact: core.Artifact) -> None:
        """Sets a PushedModel artifact's properties to this push."""
        artifact.properties.update(
            {
                "pushed": int(self.pushed),
                "model_name": self.model_name,
                "pushed_version": (
                    "" if self.version is None else str(self.version)
                ),
                "pushed_destination": self.destination,
                "reason": self.reason,
            }
        )
