"""Runs a benchmark binary as users run it and returns its JSON report."""

import json
import subprocess
import sys

from tests import child_env


def run_bench(module: str, *flags: str, timeout: float = 600) -> dict:
    """Runs `python -m <module> <flags>` and parses what it prints.

    Benchmarks run as their own process because they set TensorFlow's
    runtime environment before importing it.

    Args:
      module: e.g. "bench.model_bench".
      *flags: its command-line flags.
      timeout: seconds before the run is killed.

    Returns:
      The JSON object the benchmark printed on stdout.

    Raises:
      AssertionError: the benchmark exited non-zero (with its stderr).
    """
    out = subprocess.run(
        [sys.executable, "-m", module, *flags],
        env=child_env.python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode:
        raise AssertionError(
            f"{module} exited {out.returncode}:\n{out.stderr[-4000:]}"
        )
    return json.loads(out.stdout)
