"""Small state files that survive a crash, on local disk and on gs://.

The pipeline keeps a few small files next to its artifacts: the run lock,
the run ledger, commit markers. Each must be either the old content or the
new, never empty or half written, after a `kill -9` or a power loss, and two
processes racing for one file must not both win. This module is the one
place that knows how to do that on each filesystem:

  operation            local disk                         gs:// (one object)
  write_atomic         temp + fsync + rename + fsync dir  single upload
  create (if absent)   temp + fsync + link() + fsync dir  ifGenerationMatch=0
  replace (CAS)        flock, compare version, rename     ifGenerationMatch=gen
  delete (if version)  flock, compare version, unlink     ifGenerationMatch=gen
  read                 content and version, or None       content, generation

A `version` is opaque: the object generation on GCS, the inode and
modification time locally (every write makes a new inode by rename, so a
version names one content). Local compare-and-swap serialises on an
advisory `flock` of a sidecar file, which the kernel drops when its holder
dies, so a killed process never leaves it held.

Local files go through `os`, not tf.io.gfile, which has no fsync, link or
flock. TensorFlow's own gs:// client (tf.io.gfile) cannot express
preconditions and its endpoint is fixed at https://www.googleapis.com, so
it cannot be pointed at an emulator; gs:// goes through
google-cloud-storage, which honours STORAGE_EMULATOR_HOST (then with
anonymous credentials). On deletes the emulator the tests use
(fake-gcs-server) ignores ifGenerationMatch, so `delete` also compares the
generation itself; GCS enforces the precondition.

JSON state files (`write_json`/`read_json`) keep the previous good content
in `<path>.prev`: a reader that finds `<path>` empty, truncated or not JSON
logs a warning and returns the previous content, which is at most one
update behind; with neither readable it raises `CorruptFileError` naming
both files.

Trees of files (`list_tree`, `copy_tree`, `delete_tree`) serve publishing
a SavedModel: no atomic rename of a prefix exists on an object store, so a
publisher copies with its readiness files last and then writes a marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from typing import Any

PREV_SUFFIX = ".prev"

_log = logging.getLogger(__name__)


class PreconditionFailed(RuntimeError):
    """The file changed (or appeared, or vanished) since it was read."""


class CorruptFileError(ValueError):
    """A state file and its previous copy are both unreadable."""


@dataclasses.dataclass(frozen=True)
class Versioned:
    """A file's content and the version that content was read at."""

    data: bytes
    version: str


def is_remote(path: str) -> bool:
    """Whether `path` is an object-store URI (gs://) rather than local."""
    return path.startswith("gs://")


# Local disk.


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: str, data: bytes) -> str:
    """Writes `data` to a fresh, fsynced temp file beside `path`."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _local_version(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def _local_read(path: str) -> Versioned | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    # fstat and read on one descriptor: writers replace the inode rather
    # than change it, so both describe the same content.
    with os.fdopen(fd, "rb") as f:
        version = _local_version(os.fstat(f.fileno()))
        return Versioned(f.read(), version)


@contextlib.contextmanager
def _local_mutex(path: str) -> Iterator[None]:
    directory, name = os.path.split(path)
    sidecar = os.path.join(directory, f".{name}.cas")
    fd = os.open(sidecar, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # Closing drops the flock.


def _local_current_version(path: str) -> str | None:
    try:
        return _local_version(os.stat(path))
    except FileNotFoundError:
        return None


# gs:// through google-cloud-storage.

_clients: dict[str, Any] = {}
_client_lock = threading.Lock()


def _gcs():
    """A client per endpoint: STORAGE_EMULATOR_HOST, when set, wins."""
    from google.cloud import storage

    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    with _client_lock:
        if emulator not in _clients:
            if emulator:
                from google.auth.credentials import AnonymousCredentials

                _clients[emulator] = storage.Client(
                    project="emulator", credentials=AnonymousCredentials()
                )
            else:
                _clients[emulator] = storage.Client()
        return _clients[emulator]


def _blob(path: str):
    bucket, _, name = path[len("gs://") :].partition("/")
    if not bucket or not name:
        raise ValueError(f"{path!r} is not a gs://bucket/object URI.")
    return _gcs().bucket(bucket).blob(name)


def _gcs_errors():
    from google.api_core import exceptions

    return exceptions


def _gcs_read(path: str) -> Versioned | None:
    exc = _gcs_errors()
    blob = _blob(path)
    try:
        blob.reload()
        data = blob.download_as_bytes(if_generation_match=blob.generation)
    except exc.NotFound:
        return None
    except exc.PreconditionFailed:
        return _gcs_read(path)  # Replaced between stat and read: again.
    return Versioned(data, str(blob.generation))


def _gcs_upload(path: str, data: bytes, generation: int | None) -> str:
    exc = _gcs_errors()
    blob = _blob(path)
    try:
        # One request for a small object: GCS makes it visible whole or
        # not at all.
        blob.upload_from_string(
            data,
            content_type="application/octet-stream",
            if_generation_match=generation,
        )
    except exc.PreconditionFailed as e:
        raise PreconditionFailed(f"{path} changed: {e}") from e
    return str(blob.generation)


# The interface.


def read(path: str) -> Versioned | None:
    """Reads a small file with its version.

    Args:
      path: a local path or gs:// URI.

    Returns:
      The content and version, or None when the file does not exist.
    """
    return _gcs_read(path) if is_remote(path) else _local_read(path)


def write_atomic(path: str, data: bytes) -> None:
    """Replaces `path` with `data` so readers see the old or the new content.

    Args:
      path: a local path (its folder is created) or gs:// URI.
      data: the new content.
    """
    if is_remote(path):
        _gcs_upload(path, data, None)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory or ".", exist_ok=True)
    tmp = _write_temp(path, data)
    os.replace(tmp, path)
    _fsync_dir(directory)


def create(path: str, data: bytes) -> str | None:
    """Creates `path` holding `data` unless it exists, atomically.

    The file never exists without its content: locally the content is
    written and fsynced to a temp file that is then hard-linked into place.

    Args:
      path: a local path (its folder is created) or gs:// URI.
      data: the content.

    Returns:
      The new file's version, or None when `path` already existed.
    """
    if is_remote(path):
        try:
            return _gcs_upload(path, data, 0)
        except PreconditionFailed:
            return None
    directory = os.path.dirname(path)
    os.makedirs(directory or ".", exist_ok=True)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None
    finally:
        os.unlink(tmp)
    _fsync_dir(directory)
    return _local_current_version(path)


def replace(path: str, data: bytes, version: str) -> str:
    """Replaces `path` with `data` only if it is still at `version`.

    Args:
      path: a local path or gs:// URI.
      data: the new content.
      version: the version the caller read.

    Returns:
      The new version.

    Raises:
      PreconditionFailed: the file is gone or at another version.
    """
    if is_remote(path):
        return _gcs_upload(path, data, int(version))
    with _local_mutex(path):
        current = _local_current_version(path)
        if current != version:
            raise PreconditionFailed(
                f"{path} is at version {current}, not {version}."
            )
        tmp = _write_temp(path, data)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
        return _local_current_version(path) or ""


def delete(path: str, version: str) -> bool:
    """Deletes `path` only if it is still at `version`.

    Args:
      path: a local path or gs:// URI.
      version: the version the caller read.

    Returns:
      Whether it was deleted (False: gone already or at another version).
    """
    if is_remote(path):
        exc = _gcs_errors()
        blob = _blob(path)
        try:
            # The server-side precondition makes this race-free on GCS;
            # the client-side check first also covers emulators that do
            # not enforce it on deletes (fake-gcs-server).
            blob.reload()
            if str(blob.generation) != version:
                return False
            blob.delete(if_generation_match=int(version))
        except (exc.NotFound, exc.PreconditionFailed):
            return False
        return True
    with _local_mutex(path):
        if _local_current_version(path) != version:
            return False
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        _fsync_dir(os.path.dirname(path))
        return True


# JSON state files with a previous copy.


def _parse(path: str, data: bytes) -> Any:
    if not data.strip():
        raise CorruptFileError(f"{path} is empty.")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}).") from e


def write_json(path: str, value: Any, keep_previous: bool = True) -> None:
    """Writes `value` as JSON atomically, keeping the old content.

    Args:
      path: a local path or gs:// URI.
      value: JSON-serialisable (other values via str()).
      keep_previous: first copy the current content, if it parses, to
        `<path>.prev` so that `read_json` can recover from a damaged file.
    """
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    if keep_previous:
        current = read(path)
        if current is not None:
            try:
                _parse(path, current.data)
            except CorruptFileError:
                pass  # Keep the older good copy in .prev.
            else:
                write_atomic(path + PREV_SUFFIX, current.data)
    write_atomic(path, text.encode())


def read_json(path: str) -> Any:
    """Reads a JSON state file, falling back to `<path>.prev`.

    Args:
      path: a local path or gs:// URI.

    Returns:
      The parsed content of `path`, or of `<path>.prev` (with a warning)
      when `path` is missing, empty, truncated or not JSON.

    Raises:
      FileNotFoundError: neither file exists.
      CorruptFileError: no readable copy; the message names the files.
    """
    current = read(path)
    problem = f"{path} does not exist."
    if current is not None:
        try:
            return _parse(path, current.data)
        except CorruptFileError as e:
            problem = str(e)
    prev_path = path + PREV_SUFFIX
    prev = read(prev_path)
    if prev is None:
        if current is None:
            raise FileNotFoundError(problem)
        raise CorruptFileError(
            f"{problem} No previous copy {prev_path} to recover from; "
            "restore the file from a backup or move it aside to start "
            "afresh."
        )
    try:
        value = _parse(prev_path, prev.data)
    except CorruptFileError as e:
        raise CorruptFileError(
            f"{problem} {e} Restore {path} from a backup or move both "
            "aside to start afresh."
        ) from e
    _log.warning("%s Using the previous copy %s.", problem, prev_path)
    return value


def exists(path: str) -> bool:
    """Whether `path` (local or gs://) exists."""
    return _blob(path).exists() if is_remote(path) else os.path.exists(path)


def remove(path: str) -> bool:
    """Deletes `path` whatever its content (a commit marker being retracted).

    Args:
      path: a local path or gs:// URI.

    Returns:
      Whether it existed.
    """
    if is_remote(path):
        try:
            _blob(path).delete()
        except _gcs_errors().NotFound:
            return False
        return True
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    _fsync_dir(os.path.dirname(path) or ".")
    return True


# Trees of files (a SavedModel being published). An object store has no
# directories: a "directory" is the common prefix of its objects' names.


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} is not a gs://bucket/prefix URI.")
    return bucket, name


def list_tree(root: str) -> list[str]:
    """Paths of all files under `root`, relative to it, sorted.

    Args:
      root: a local directory or gs:// prefix (absent: empty list).

    Returns:
      Relative paths with "/" separators.
    """
    if is_remote(root):
        bucket, name = _split(root.rstrip("/"))
        prefix = name + "/" if name else ""
        blobs = _gcs().list_blobs(bucket, prefix=prefix)
        return sorted(b.name[len(prefix) :] for b in blobs)
    found = []
    for directory, _, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        for file_name in files:
            path = file_name if relative == "." else f"{relative}/{file_name}"
            found.append(path.replace(os.sep, "/"))
    return sorted(found)


def list_children(root: str) -> list[str]:
    """Names directly under `root` (files and "directories"), sorted."""
    return sorted({p.split("/", 1)[0] for p in list_tree(root)})


def copy_file(src: str, dst: str) -> None:
    """Copies one file between local disk and gs:// in any direction.

    A gs:// destination appears whole or not at all (one upload); a local
    one is written to a temporary name and renamed.
    """
    if is_remote(src) and is_remote(dst):
        source = _blob(src)
        bucket, name = _split(dst)
        source.bucket.copy_blob(source, _gcs().bucket(bucket), name)
    elif is_remote(src):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        tmp = f"{dst}.tmp-{uuid.uuid4().hex}"
        _blob(src).download_to_filename(tmp)
        os.replace(tmp, dst)
    elif is_remote(dst):
        _blob(dst).upload_from_filename(
            src, content_type="application/octet-stream"
        )
    else:
        with open(src, "rb") as f:
            write_atomic(dst, f.read())


def copy_tree(src: str, dst: str, last: tuple[str, ...] = ()) -> list[str]:
    """Copies every file under `src` to `dst`, the files in `last` last.

    Args:
      src: a local directory or gs:// prefix.
      dst: the destination directory or prefix.
      last: relative paths copied after all others, in this order (a
        reader that waits for them then finds everything else there).

    Returns:
      The relative paths copied, in copy order.
    """
    files = list_tree(src)
    order = [p for p in files if p not in last]
    order += [p for p in last if p in files]
    for path in order:
        copy_file(f"{src.rstrip('/')}/{path}", f"{dst.rstrip('/')}/{path}")
    return order


def delete_tree(root: str) -> int:
    """Deletes every file under `root` (and, locally, the directory).

    Returns:
      The number of files deleted.
    """
    if not is_remote(root):
        if not os.path.exists(root):
            return 0
        count = len(list_tree(root))
        shutil.rmtree(root)
        return count
    exc = _gcs_errors()
    count = 0
    for path in list_tree(root):
        try:
            _blob(f"{root.rstrip('/')}/{path}").delete()
            count += 1
        except exc.NotFound:
            pass
    return count
