"""Where the source tree is, for tests that read it as files."""

import os


def root() -> str:
    """The workspace root (the folder holding pyproject.toml).

    Runfiles are symlinks into the source tree; this file's link leads
    back to it.

    Raises:
      FileNotFoundError: no pyproject.toml where the tree should be.
    """
    path = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if not os.path.exists(os.path.join(path, "pyproject.toml")):
        raise FileNotFoundError(
            f"No pyproject.toml at {path}: cannot find the source tree."
        )
    return path
