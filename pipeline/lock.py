"""A lock against concurrent runs of pipelines sharing one pipeline root.

Scheduled retraining may fire while the previous run is still going (cron
on a TPU VM, Cloud Scheduler retries), and a preempted VM never releases
what it held. The lock is a file `<root>/.lock` holding a lease:

  {"token": <uuid>, "host", "pid", "started", "expires": <unix time>}

- Creation is atomic with its content (storage.objstore.create: link() of
  a written temp file locally, ifGenerationMatch=0 on gs://), so no reader
  ever sees the file without an owner.
- The holder renews `expires` from a heartbeat thread by compare-and-swap
  on the file's version; a holder that stops renewing (killed, preempted,
  partitioned) loses the lock when the lease runs out, whatever its host.
  On the holder's own host a dead pid frees the lock at once.
- Taking over a stale lock (expired, dead local pid, or empty/unreadable:
  not written by this code) is a compare-and-swap against the version that
  was judged stale, so of two starters only one wins.
- Release deletes the file only if it still holds this run's token, at the
  version this run last wrote.

A holder whose renewal finds another owner (it stalled past its lease and
was taken over) logs an error and interrupts its main thread, so two runs
never keep writing one root.
"""

from __future__ import annotations

import _thread
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from absl import logging

from storage import objstore

LOCK_FILE = ".lock"
# A preempted run's lock frees this long after its last heartbeat; renewals
# come every third of it, so a live holder survives two missed beats.
DEFAULT_LEASE_SECONDS = 120.0


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


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """Context manager holding `<root>/.lock` for the duration of a run.

    Args:
      root: the pipeline root, local or gs://.
      lease_seconds: how long the lock outlives the holder's last renewal.
      heartbeat_seconds: how often the holder renews; a third of the lease
        by default.
      on_lost: called from the heartbeat thread when the lock was taken
        over by another run; by default interrupts the main thread.
    """

    def __init__(
        self,
        root: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        heartbeat_seconds: float | None = None,
        on_lost: Callable[[], None] | None = None,
    ):
        self.path = os.path.join(root, LOCK_FILE)
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_seconds = float(
            heartbeat_seconds or self.lease_seconds / 3
        )
        self.token = uuid.uuid4().hex
        self._started = time.time()
        self._on_lost = on_lost or _thread.interrupt_main
        self._version: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _content(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self._started,
                "expires": time.time() + self.lease_seconds,
                "lease_seconds": self.lease_seconds,
            }
        ).encode()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock or raises.

        Raises:
          LockHeldError: a live run holds it, or another starter won the
            race for a stale one. The message names the holder.
        """
        # A few rounds: the holder may release between our create and read.
        for _ in range(3):
            version = objstore.create(self.path, self._content())
            if version is not None:
                self._hold(version)
                return
            current = objstore.read(self.path)
            if current is None:
                continue  # Released meanwhile: try to create again.
            holder = _parse(current.data)
            if holder.get("token") == self.token:
                # A retried create whose first attempt had succeeded.
                self._hold(current.version)
                return
            reason = self._stale_reason(holder)
            if reason is None:
                raise LockHeldError(
                    f"Another run holds {self.path} ({_describe(holder)}); "
                    "wait for it, or for its lease to expire if it died."
                )
            try:
                version = objstore.replace(
                    self.path, self._content(), current.version
                )
            except objstore.PreconditionFailed as e:
                raise LockHeldError(
                    f"Another run took over the stale lock {self.path} first."
                ) from e
            logging.warning(
                "Took over the lock %s: %s (%s).",
                self.path,
                reason,
                _describe(holder),
            )
            self._hold(version)
            return
        raise LockHeldError(f"{self.path} keeps changing; try again later.")

    def release(self) -> None:
        """Stops renewing and deletes the lock if this run still owns it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            version, self._version = self._version, None
        if version is None:
            return
        current = objstore.read(self.path)
        if current is None or _parse(current.data).get("token") != self.token:
            logging.warning(
                "Not deleting %s: another run owns it now.", self.path
            )
            return
        if not objstore.delete(self.path, current.version):
            logging.warning(
                "Not deleting %s: it changed while releasing.", self.path
            )

    def _hold(self, version: str) -> None:
        with self._mutex:
            self._version = version
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat, name="RunLock-heartbeat", daemon=True
        )
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            with self._mutex:
                version = self._version
                if version is None:
                    return
                try:
                    self._version = objstore.replace(
                        self.path, self._content(), version
                    )
                    continue
                except objstore.PreconditionFailed:
                    pass
                except Exception:  # noqa: BLE001 (a blip: retry next beat)
                    logging.exception("Could not renew %s", self.path)
                    continue
                current = objstore.read(self.path)
                holder = _parse(current.data) if current else {}
                if holder.get("token") == self.token:
                    # Our own write whose reply was lost; carry on from it.
                    self._version = current.version
                    continue
                self._version = None
                self.lost = True
            logging.error(
                "Lost the lock %s to another run (%s); stopping this run.",
                self.path,
                _describe(holder),
            )
            self._on_lost()
            return

    def _stale_reason(self, holder: dict) -> str | None:
        """Why the lock `holder` describes may be taken, or None."""
        if not holder:
            return "it is empty or unreadable"
        local = holder.get("host") == socket.gethostname()
        if local and not _pid_alive(int(holder.get("pid", -1))):
            return "its process is gone"
        if "expires" not in holder and not local:
            return "it has no lease (an older format) and another host"
        expires = float(holder.get("expires", float("inf")))
        if time.time() > expires:
            return f"its lease expired {time.time() - expires:.0f}s ago"
        return None


def _describe(holder: dict) -> str:
    if not holder:
        return "no owner recorded"
    lease = "no lease"
    if "expires" in holder:
        until = time.gmtime(float(holder["expires"]))
        lease = f"lease until {time.strftime('%H:%M:%S', until)} UTC"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, {lease}"
