"""The Evaluator, Exporter and Pusher binaries, chained as a user runs them.

Each binary runs in its own process (`python -m components.<name>.main`),
reads the artifacts the previous one wrote and writes its own under
`--output_dir`; the last one publishes a TF Serving version directory.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from artifacts import blessing as blessing_lib
from artifacts import model as model_io
from components import base
from tests import child_env
from tests.serving import testutil

LABELS = ["cat", "dog", "fox"]


def _run(module: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        capture_output=True,
        text=True,
        env=child_env.python_env(),
        timeout=600,
    )


def _versions(directory: str) -> list[str]:
    """The version directories a model server would load."""
    if not os.path.isdir(directory):
        return []
    return sorted(d for d in os.listdir(directory) if d.isdigit())


class ComponentCliTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.root = tempfile.mkdtemp(
            prefix="component_cli_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        testutil.write_model_artifact(f"{root}/trained", LABELS, seed=2)
        testutil.write_examples_artifact(
            f"{root}/examples",
            {"validation": [[i % 3] for i in range(6)]},
            LABELS,
            shards=1,
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def _ok(self, module, *flags):
        result = _run(module, *flags)
        self.assertEqual(result.returncode, 0, result.stderr[-4000:])
        return result

    def _push(self, output: str, *flags: str) -> base.Artifact:
        """Runs the Pusher on the export; returns its PushedModel."""
        root = self.root
        self._ok(
            "components.pusher.main",
            f"--model={root}/Exporter/model",
            f"--blessing={root}/Evaluator/blessing",
            f"--serving_base={root}/store",
            "--model_name=pets",
            f"--output_dir={root}/{output}",
            *flags,
        )
        return base.Artifact.read(
            f"{root}/{output}/pushed_model", base.PUSHED_MODEL
        )

    def test_evaluate_export_push(self):
        root = self.root
        self._ok(
            "components.evaluator.main",
            f"--examples={root}/examples",
            f"--model={root}/trained",
            "--value_thresholds=top1>=0.0",
            "--batch_size=4",
            f"--output_dir={root}/Evaluator",
        )
        blessing = base.Artifact.read(
            f"{root}/Evaluator/blessing", base.MODEL_BLESSING
        )
        self.assertTrue(blessing_lib.is_blessed(blessing))
        evaluation = f"{root}/Evaluator/evaluation"
        self.assertTrue(os.path.exists(f"{evaluation}/metrics.json"))
        # The resolved config is recorded next to the outputs.
        execution = base.read_json(f"{evaluation}/{base.EXECUTION_FILE}")
        self.assertEqual(execution["config"]["batch_size"], 4)

        self._ok(
            "components.exporter.main",
            f"--model={root}/trained",
            f"--blessing={root}/Evaluator/blessing",
            "--model_name=pets",
            "--top_k=2",
            "--warmup_batch_sizes=1,2",
            "--noinfra_validate",
            f"--output_dir={root}/Exporter",
        )
        exported = base.Artifact.read(f"{root}/Exporter/model", base.MODEL)
        self.assertEqual(exported.properties["exported"], 1)
        self.assertTrue(
            os.path.exists(
                f"{root}/Exporter/model/{model_io.SERVING_DIR}/saved_model.pb"
            )
        )
        infra = base.Artifact.read(
            f"{root}/Exporter/infra_blessing", base.MODEL_BLESSING
        )
        # Skipped validation blesses nothing on its own behalf.
        self.assertFalse(blessing_lib.is_blessed(infra, blessing_lib.INFRA))

        # With the infra blessing as an input, the Pusher refuses.
        refused = self._push(
            "Refused", f"--infra_blessing={root}/Exporter/infra_blessing"
        )
        self.assertEqual(refused.properties["pushed"], 0)
        self.assertIn("not INFRA_BLESSED", refused.properties["reason"])
        self.assertEqual(_versions(f"{root}/store/pets"), [])

        pushed = self._push("Pusher")
        self.assertEqual(pushed.properties["pushed"], 1)
        versions = _versions(f"{root}/store/pets")
        self.assertEqual(versions, [pushed.properties["pushed_version"]])
        self.assertTrue(
            os.path.exists(f"{root}/store/pets/{versions[0]}/saved_model.pb")
        )

    def test_missing_input_flag_names_the_flag(self):
        result = _run(
            "components.evaluator.main",
            f"--examples={self.root}/examples",
            f"--output_dir={self.root}/NoModel",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--model is required", result.stderr)
        self.assertFalse(os.path.exists(f"{self.root}/NoModel"))


if __name__ == "__main__":
    tf.test.main()
