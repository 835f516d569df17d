"""The tree is formatted and lint-clean under the pinned ruff.

Runs `ruff format --check` and `ruff check` (settings in pyproject.toml)
over the source tree this test file was built from.
"""

import os
import subprocess
import sys

from absl.testing import absltest


def _source_root() -> str:
    # Runfiles are symlinks into the source tree; follow this file's link
    # back to the workspace root (the folder holding pyproject.toml).
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if not os.path.exists(os.path.join(root, "pyproject.toml")):
        raise FileNotFoundError(
            f"No pyproject.toml at {root}: cannot find the source tree."
        )
    return root


def _ruff() -> list[str]:
    from ruff.__main__ import find_ruff_bin

    return [find_ruff_bin()]


class LintTest(absltest.TestCase):
    def _run(self, *args):
        result = subprocess.run(
            _ruff() + list(args),
            cwd=_source_root(),
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(
            result.returncode,
            0,
            msg=f"ruff {' '.join(args)} failed; run tools/format.sh:\n"
            f"{result.stdout}\n{result.stderr}",
        )

    def test_formatted(self):
        self._run("format", "--no-cache", "--check", "--diff", ".")

    def test_lint_clean(self):
        self._run("check", "--no-cache", ".")


if __name__ == "__main__":
    sys.exit(absltest.main())
