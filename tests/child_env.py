"""The environment of a child Python process that a test starts.

Tests that run a binary as users do (a trainer worker, the benchmark, a
CLI) start it with `sys.executable -m module`; the child must import the
same code as the test, under Bazel (runfiles on `sys.path`) and under
pytest alike.
"""

from __future__ import annotations

import os
import sys


def python_env(**extra: str) -> dict[str, str]:
    """The test's environment for a child Python: same imports, quiet TF.

    Args:
      **extra: variables to add or replace (e.g. TF_CONFIG for a worker).

    Returns:
      A copy of `os.environ` with PYTHONPATH set to the test's `sys.path`,
      TensorFlow's C++ logging at warnings, legacy Keras (tf_keras) and no
      inherited TF_CONFIG, then `extra`.
    """
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out["TF_USE_LEGACY_KERAS"] = "1"
    out.pop("TF_CONFIG", None)
    out.update(extra)
    return out
