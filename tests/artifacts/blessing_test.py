"""ModelBlessing markers: one protocol for model and infra blessings."""

import os

from absl.testing import absltest, parameterized

from artifacts import blessing, core


class BlessingTest(parameterized.TestCase):
    def _artifact(self):
        uri = self.create_tempdir().full_path
        return core.Artifact(core.MODEL_BLESSING, uri)

    @parameterized.named_parameters(
        ("model", blessing.MODEL, "BLESSED", "NOT_BLESSED"),
        ("infra", blessing.INFRA, "INFRA_BLESSED", "INFRA_NOT_BLESSED"),
    )
    def test_verdicts_replace_each_other(self, kind, yes, no):
        artifact = self._artifact()
        blessing.write(artifact, True, kind, reason="ok")
        self.assertTrue(blessing.is_blessed(artifact, kind))
        self.assertEqual(sorted(os.listdir(artifact.uri)), [yes])
        self.assertEqual(blessing.reason(artifact), "ok")
        blessing.write(artifact, False, kind)
        self.assertFalse(blessing.is_blessed(artifact, kind))
        self.assertEqual(sorted(os.listdir(artifact.uri)), [no])
        self.assertEqual(blessing.blessed_property(artifact), 0)

    def test_the_kinds_do_not_stand_in_for_each_other(self):
        artifact = self._artifact()
        blessing.write(artifact, True, blessing.INFRA)
        self.assertFalse(blessing.is_blessed(artifact, blessing.MODEL))

    def test_marker_without_the_property_is_not_blessed(self):
        # A run that died after the marker but before its record.
        artifact = self._artifact()
        blessing.write(artifact, True)
        reread = core.Artifact(core.MODEL_BLESSING, artifact.uri)
        self.assertIsNone(blessing.blessed_property(reread))
        self.assertFalse(blessing.is_blessed(reread))

    def test_property_without_the_marker_is_not_blessed(self):
        artifact = self._artifact()
        artifact.properties[blessing.BLESSED_PROPERTY] = 1
        self.assertFalse(blessing.is_blessed(artifact))


if __name__ == "__main__":
    absltest.main()
