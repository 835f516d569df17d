"""Starting trainer processes from tests: ports, TF_CONFIG, commands."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from tests import child_env


def free_port() -> int:
    """A localhost port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG for worker `index` of a localhost cluster."""
    return json.dumps(
        {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def start_main(
    args: list[str], log_path: str, **extra_env: str
) -> subprocess.Popen:
    """Starts the Trainer CLI (`components.trainer.main`) in a new process.

    Args:
      args: its flags.
      log_path: where its stdout and stderr go.
      **extra_env: environment variables to add (e.g. TF_CONFIG).

    Returns:
      The running process.
    """
    return _start(
        "components.trainer.main",
        args,
        log_path,
        child_env.python_env(**extra_env),
    )


def start_driver(args: list[str], log_path: str) -> subprocess.Popen:
    """Starts `tests.components.trainer.train_driver` in a new process."""
    return _start(
        "tests.components.trainer.train_driver",
        args,
        log_path,
        child_env.python_env(),
    )


def _start(module, args, log_path, environment) -> subprocess.Popen:
    with open(log_path, "w") as log:
        # The child keeps its own copy of the file descriptor.
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )


def wait(proc: subprocess.Popen, log_path: str, timeout: float) -> None:
    """Waits for a process; raises with its log's tail when it failed."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = "timeout"
    if code != 0:
        with open(log_path) as f:
            tail = f.read()[-6000:]
        raise AssertionError(f"{proc.args} exited with {code}:\n{tail}")
