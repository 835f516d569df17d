"""Keeps TensorFlow's start-up chatter out of the pipeline's console.

A pipeline binary prints its own progress lines and result table; CUDA
probing, oneDNN notices, XLA and deprecation messages from TensorFlow and
its libraries bury them. `quiet_unless_verbose` must run before TensorFlow
is first imported (the C++ log level is read once, at load). `-v 1`
(absl's `--verbosity`) or a `TF_CPP_MIN_LOG_LEVEL` of the user's own
brings everything back. Imports nothing heavy.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

_VERBOSITY = re.compile(r"^--?(?:v|verbosity)(?:=(?P<value>-?\d+))?$")
# The directory holding the project's packages (a source tree, runfiles
# or site-packages): log records from code outside them are the libraries'.
# PROJECT_PACKAGES is every top-level package but tests/ (console_test
# checks it against the source tree).
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_PACKAGES = (
    "artifacts",
    "bench",
    "coatnet_tf",
    "components",
    "configs",
    "pipeline",
    "serving",
    "storage",
)


def verbosity_requested(argv: list[str] | None = None) -> bool:
    """Whether the command line asks for absl verbosity >= 1 (-v 1)."""
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        match = _VERBOSITY.match(arg)
        if not match:
            continue
        value = match["value"]
        if value is None and i + 1 < len(argv):
            value = argv[i + 1]
        try:
            if int(value) >= 1:
                return True
        except (TypeError, ValueError):
            continue
    return False


def quiet_unless_verbose(argv: list[str] | None = None) -> bool:
    """Silences TensorFlow's console noise unless -v 1 or more is given.

    Sets `TF_CPP_MIN_LOG_LEVEL=3` (C++ INFO/WARNING/ERROR lines: CUDA,
    cuDNN, oneDNN, XLA), lowers the Python "tensorflow" logger to errors
    (deprecation notices) and Beam's to warnings, and ignores Python
    deprecation and future warnings. The project's own absl log lines
    stay. Errors that matter still surface as exceptions.

    Args:
      argv: the command line (default `sys.argv[1:]`).

    Returns:
      True when the console was quietened.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if verbosity_requested(argv):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Beam's runner narrates every bundle at INFO, and its local workers
    # relay their start-up warnings.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    # TensorFlow's own Python modules log through absl too (checkpoint
    # sharding, SavedModel signatures, fingerprints): absl's handler keeps
    # the project's records and the libraries' warnings and errors.
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(ProjectRecords())
    for category in (
        DeprecationWarning,
        PendingDeprecationWarning,
        FutureWarning,
    ):
        warnings.filterwarnings("ignore", category=category)
    return True


class ProjectRecords(logging.Filter):
    """Passes the project's log records and other code's warnings.

    Args:
      root: the directory holding the project's packages.
    """

    def __init__(self, root: str = _PROJECT_ROOT):
        super().__init__()
        # Paths as Python names the modules (no symlinks resolved: under
        # Bazel the runfiles tree links each file to the source tree).
        self._dirs = tuple(
            os.path.join(os.path.abspath(root), package, "")
            for package in PROJECT_PACKAGES
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return os.path.abspath(record.pathname or "").startswith(self._dirs)
