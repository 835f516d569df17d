"""A run that takes the pipeline root's lock, for the lock tests.

Usage: python -m tests.pipeline.lock_child ROOT START_AT HOLD LEASE BEAT

Waits until the wall-clock time START_AT (so racing children try at the
same moment), tries the lock, prints ACQUIRED or HELD and exits 0 or 75
(the retrain binary's code for a held lock). A holder keeps the lock HOLD
seconds (forever if negative) and prints RELEASED after letting go.
"""

from __future__ import annotations

import sys
import time

from pipeline import lock

EXIT_LOCKED = 75


def main(argv: list[str]) -> int:
    root, start_at, hold, lease, beat = argv[1:6]
    time.sleep(max(0.0, float(start_at) - time.time()))
    run_lock = lock.RunLock(
        root, lease_seconds=float(lease), heartbeat_seconds=float(beat)
    )
    try:
        run_lock.acquire()
    except lock.LockHeldError as e:
        print(f"HELD {e}", flush=True)
        return EXIT_LOCKED
    print("ACQUIRED", flush=True)
    try:
        if float(hold) < 0:
            while True:
                time.sleep(3600)
        time.sleep(float(hold))
    finally:
        run_lock.release()
    print("RELEASED" + (" LOST" if run_lock.lost else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
