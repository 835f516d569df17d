"""The run lock under races, crashes and dead hosts, locally and on gs://.

Each starter is a real process (tests/pipeline/lock_child.py) that exits 0
when it got the lock and 75 (the retrain binary's code) when it did not;
holders are killed with SIGKILL. A holder "on another host" runs in its own
UTS namespace with another hostname, as a preempted VM or a rescheduled
container would be.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

from absl.testing import absltest

from pipeline import lock
from storage import objstore
from tests import child_env
from tests.storage import emulator

HELD = 75


class _Child:
    """One lock_child process."""

    def __init__(
        self,
        root: str,
        start_at: float = 0.0,
        hold: float = 0.6,
        lease: float = 30.0,
        beat: float = 10.0,
        hostname: str = "",
    ):
        cmd = [
            sys.executable,
            "-m",
            "tests.pipeline.lock_child",
            root,
            str(start_at),
            str(hold),
            str(lease),
            str(beat),
        ]
        if hostname:
            # A new UTS namespace: the child sees another hostname.
            cmd = [
                shutil.which("unshare") or "unshare",
                "-u",
                "sh",
                "-c",
                f'hostname {hostname} && exec "$0" "$@"',
                *cmd,
            ]
        self.proc = subprocess.Popen(
            cmd,
            env=child_env.python_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def first_line(self) -> str:
        return self.proc.stdout.readline().strip()

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out + err

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate()


class _LockCases:
    """The same cases on each filesystem; subclasses give `new_root`."""

    rounds = 8

    def new_root(self) -> str:
        raise NotImplementedError

    def lock_path(self, root: str) -> str:
        return os.path.join(root, lock.LOCK_FILE)

    def _write_lock(self, root: str, holder: dict | bytes) -> None:
        data = holder if isinstance(holder, bytes) else json.dumps(holder)
        objstore.write_atomic(
            self.lock_path(root),
            data if isinstance(data, bytes) else data.encode(),
        )

    def _foreign(self, expires_in: float) -> dict:
        return {
            "token": uuid.uuid4().hex,
            "host": "preempted-vm-that-is-gone",
            "pid": 4242,
            "started": time.time() - 3600,
            "expires": time.time() + expires_in,
        }

    def _race(self, root: str, starters: int = 2) -> list[tuple[int, str]]:
        # The suite runs beside other tests: start-up times vary by a second
        # or more, so the starters meet 2 s from now and the winner holds
        # the lock long enough for a late starter to find it held.
        start_at = time.time() + 2.0
        children = [_Child(root, start_at, hold=2.5) for _ in range(starters)]
        return [c.finish() for c in children]

    def test_racing_starters_one_proceeds_each_round(self):
        """Fresh root, empty lock file, a dead host's expired lease and a
        lock of an older format: each round exactly one starter runs."""
        before = {
            0: None,
            1: b"",
            2: self._foreign(expires_in=-5),
            3: {"host": "old-vm", "pid": 7, "started": 0.0},
        }
        root = self.new_root()
        for i in range(self.rounds):
            state = before[i % len(before)]
            if state is not None:
                self._write_lock(root, state)
            results = self._race(root)
            codes = sorted(code for code, _ in results)
            self.assertEqual(codes, [0, HELD], f"round {i}: {results}")
            winner = next(out for code, out in results if code == 0)
            self.assertIn("RELEASED", winner)
            self.assertNotIn("LOST", winner)
            self.assertIsNone(
                objstore.read(self.lock_path(root)),
                f"round {i}: the owner did not release the lock",
            )

    def test_live_foreign_lease_is_respected(self):
        root = self.new_root()
        holder = self._foreign(expires_in=60)
        self._write_lock(root, holder)
        before = objstore.read(self.lock_path(root))
        for code, out in self._race(root):
            self.assertEqual(code, HELD, out)
            self.assertIn("preempted-vm-that-is-gone", out)
        self.assertEqual(objstore.read(self.lock_path(root)), before)

    def test_live_lease_is_renewed(self):
        root = self.new_root()
        holder = _Child(root, hold=16.0, lease=3.0, beat=0.5)
        self.assertEqual(holder.first_line(), "ACQUIRED")
        first = json.loads(objstore.read(self.lock_path(root)).data)
        time.sleep(7.0)  # More than twice the lease.
        renewed = json.loads(objstore.read(self.lock_path(root)).data)
        self.assertEqual(renewed["token"], first["token"])
        self.assertGreater(renewed["expires"], first["expires"] + 4.0)
        code, out = _Child(root).finish()
        self.assertEqual(code, HELD, out)
        code, out = holder.finish()
        self.assertEqual(code, 0, out)
        self.assertIsNone(objstore.read(self.lock_path(root)))

    def test_killed_holder_on_another_host_frees_after_its_lease(self):
        root = self.new_root()
        # Long enough for a starter to try within it, even on a busy host.
        lease = 12.0
        holder = _Child(
            root, hold=-1, lease=lease, beat=0.5, hostname="preempted-vm"
        )
        try:
            self.assertEqual(holder.first_line(), "ACQUIRED")
        finally:
            holder.kill()
        killed_at = time.time()
        held = json.loads(objstore.read(self.lock_path(root)).data)
        self.assertEqual(held["host"], "preempted-vm")
        # Before the lease runs out the dead run still holds the root.
        code, out = _Child(root).finish()
        self.assertEqual(code, HELD, out)
        self.assertIn("preempted-vm", out)
        time.sleep(max(0.0, held["expires"] - time.time()) + 0.2)
        code, out = _Child(root).finish()
        self.assertEqual(code, 0, out)
        self.assertIn("its lease expired", out)
        self.assertGreater(time.time() - killed_at, lease - 1.0)

    def test_killed_holder_on_this_host_frees_at_once(self):
        root = self.new_root()
        holder = _Child(root, hold=-1, lease=600, beat=200)
        try:
            self.assertEqual(holder.first_line(), "ACQUIRED")
        finally:
            holder.kill()
        code, out = _Child(root).finish()
        self.assertEqual(code, 0, out)

    def test_release_only_by_owner_and_loss_is_noticed(self):
        root = self.new_root()
        lost = []
        run = lock.RunLock(
            root,
            lease_seconds=3,
            heartbeat_seconds=0.2,
            on_lost=lambda: lost.append(1),
        )
        run.acquire()
        # Another run takes over (as if this one had stalled past its
        # lease); the heartbeat notices and this run must not delete it.
        current = objstore.read(self.lock_path(root))
        thief = dict(self._foreign(expires_in=60), host=socket.gethostname())
        objstore.replace(
            self.lock_path(root), json.dumps(thief).encode(), current.version
        )
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(lost, [1])
        self.assertTrue(run.lost)
        run.release()
        after = json.loads(objstore.read(self.lock_path(root)).data)
        self.assertEqual(after["token"], thief["token"])

    def test_second_holder_in_process_is_refused(self):
        root = self.new_root()
        with lock.RunLock(root):
            with self.assertRaisesRegex(lock.LockHeldError, "Another run"):
                with lock.RunLock(root):
                    pass
        with lock.RunLock(root):
            pass


class LocalLockTest(_LockCases, absltest.TestCase):
    def new_root(self) -> str:
        return self.create_tempdir().full_path


class GcsLockTest(emulator.EmulatorMixin, _LockCases, absltest.TestCase):
    rounds = 4

    def new_root(self) -> str:
        return self.gcs.uri(f"root-{uuid.uuid4().hex[:8]}")


if __name__ == "__main__":
    absltest.main()
