"""The tree is formatted and lint-clean under the pinned ruff.

Runs `ruff format --check` and `ruff check` (settings in pyproject.toml)
over the source tree this test file was built from.
"""

import subprocess
import sys

from absl.testing import absltest

from tests import source_tree


def _ruff() -> list[str]:
    from ruff.__main__ import find_ruff_bin

    return [find_ruff_bin()]


class LintTest(absltest.TestCase):
    def _run(self, *args):
        result = subprocess.run(
            _ruff() + list(args),
            cwd=source_tree.root(),
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
