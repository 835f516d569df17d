"""pytest glue for running the absltest-based tests without Bazel.

Bazel runs each test file as its own main (absltest parses the flags);
under pytest the absl flags (e.g. --test_tmpdir) must be parsed once here.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import flags  # noqa: E402


def pytest_configure(config):
    del config  # Unused.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
