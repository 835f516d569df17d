"""A lock against concurrent runs of pipelines sharing one pipeline root.

Scheduled retraining may fire while the previous run is still going (cron
on a TPU VM, Cloud Scheduler retries). The lock is a file `<root>/.lock`
created exclusively (O_CREAT | O_EXCL on local disk) holding the owner's
host, pid and start time. A lock whose owner process is gone on this host
is stale and is taken over, with a log line. On gs:// roots the create is
check-then-write (GCS has no exclusive create through tf.io.gfile), which is
safe for schedulers that do not start two runs within the same second.
"""

from __future__ import annotations

import json
import os
import socket
import time

import tensorflow as tf
from absl import logging

LOCK_FILE = ".lock"


class LockHeldError(RuntimeError):
    """Another run holds the pipeline root's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Context manager holding `<root>/.lock` for the duration of a run."""

    def __init__(self, root: str):
        self.path = os.path.join(root, LOCK_FILE)
        self._owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }

    def __enter__(self) -> RunLock:
        tf.io.gfile.makedirs(os.path.dirname(self.path))
        if not self._try_create():
            holder = self._read_holder()
            if self._is_stale(holder):
                logging.warning(
                    "Taking over the stale lock %s (holder %s is gone).",
                    self.path,
                    holder,
                )
                tf.io.gfile.remove(self.path)
                if not self._try_create():
                    raise LockHeldError(f"Lost the race for {self.path}.")
            else:
                raise LockHeldError(
                    f"Another run holds {self.path} ({holder}); wait for it "
                    "or, if it died on another host, delete the file."
                )
        return self

    def __exit__(self, *exc) -> None:
        if tf.io.gfile.exists(self.path):
            tf.io.gfile.remove(self.path)

    def _try_create(self) -> bool:
        data = json.dumps(self._owner)
        if "://" not in self.path:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(data)
            return True
        if tf.io.gfile.exists(self.path):
            return False
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(data)
        return True

    def _read_holder(self) -> dict:
        try:
            with tf.io.gfile.GFile(self.path) as f:
                return json.loads(f.read())
        except (ValueError, tf.errors.NotFoundError):
            return {}

    def _is_stale(self, holder: dict) -> bool:
        if not holder:
            return True  # Empty or unreadable: a writer died mid-create.
        if holder.get("host") != socket.gethostname():
            return False  # Cannot tell from here; never steal remotely.
        return not _pid_alive(int(holder.get("pid", -1)))
