"""Tests for {SPAN}/{VERSION} resolution."""

import os

from absl.testing import absltest

from components.example_gen import spans


class SpansTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        for name in ("span-3/v1", "span-3/v2", "span-12/v1", "span-x/v9"):
            os.makedirs(os.path.join(self.root, name, "train"))
        os.makedirs(os.path.join(self.root, "day-0007"))
        os.makedirs(os.path.join(self.root, "day-007"))

    def test_no_span_is_span_zero(self):
        got = spans.resolve(os.path.join(self.root, "span-3"))
        self.assertEqual(got.span, 0)
        self.assertIsNone(got.version)
        self.assertEqual(got.pattern, os.path.join(self.root, "span-3"))

    def test_latest_span_and_version(self):
        pattern = os.path.join(self.root, "span-{SPAN}/v{VERSION}/train")
        got = spans.resolve(pattern)
        # Numeric, not lexicographic: 12 > 3.
        self.assertEqual((got.span, got.version), (12, 1))
        self.assertEqual(
            got.pattern, os.path.join(self.root, "span-12/v1/train")
        )

    def test_named_span_latest_version(self):
        pattern = os.path.join(self.root, "span-{SPAN}/v{VERSION}/train")
        got = spans.resolve(pattern, span=3)
        self.assertEqual((got.span, got.version), (3, 2))
        got = spans.resolve(pattern, span=3, version=1)
        self.assertEqual(
            got.pattern, os.path.join(self.root, "span-3/v1/train")
        )

    def test_width_spec(self):
        got = spans.resolve(os.path.join(self.root, "day-{SPAN:4}"))
        self.assertEqual(got.pattern, os.path.join(self.root, "day-0007"))
        self.assertEqual(got.span, 7)

    def test_errors_name_the_flag_and_pattern(self):
        pattern = os.path.join(self.root, "span-{SPAN}/v{VERSION}/train")
        with self.assertRaisesRegex(
            ValueError, r"--span=5.*present: \[3, 12\]"
        ):
            spans.resolve(pattern, span=5)
        with self.assertRaisesRegex(ValueError, "--version=7"):
            spans.resolve(pattern, span=3, version=7)
        missing = os.path.join(self.root, "nothing-{SPAN}")
        with self.assertRaisesRegex(ValueError, "--validation_input=.*nothing"):
            spans.resolve(missing, flag="validation_input")
        with self.assertRaisesRegex(ValueError, "needs {SPAN}"):
            spans.resolve(os.path.join(self.root, "v{VERSION}"))
        with self.assertRaisesRegex(ValueError, "has no {SPAN}"):
            spans.resolve(self.root, span=1)

    def test_second_input_follows_the_first(self):
        main = spans.resolve(os.path.join(self.root, "span-{SPAN}/v{VERSION}"))
        other = spans.resolve_like(
            os.path.join(self.root, "span-{SPAN}/v{VERSION}/train"),
            main,
            "validation_input",
        )
        self.assertEqual((other.span, other.version), (12, 1))
        plain = spans.resolve_like("/x/val", main, "validation_input")
        self.assertEqual(plain.pattern, "/x/val")


if __name__ == "__main__":
    absltest.main()
