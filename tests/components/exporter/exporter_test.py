"""The Exporter: signatures, label asset, warmup file, infra-validation."""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from artifacts import blessing as blessing_artifact
from artifacts import model as model_io
from artifacts import model_store
from components import base, preprocessing
from components.exporter import component as exporter
from components.exporter import infra_validation, serving_model
from tests.serving import testutil

LABELS = [f"label {i}" for i in range(7)]


def _saved_model_cli() -> list[str]:
    """The venv's saved_model_cli, else the module it runs."""
    beside = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("saved_model_cli")
    if found:
        return [found]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def _blessing(uri: str, blessed: bool) -> base.Artifact:
    artifact = base.Artifact(base.MODEL_BLESSING, uri)
    tf.io.gfile.makedirs(uri)
    blessing_artifact.write(artifact, blessed)
    artifact.write()
    return artifact


class ExporterTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # A fresh directory per run: concurrent runs must not share one.
        root = cls.root = tempfile.mkdtemp(
            prefix="exporter_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        cls.model_artifact, cls.model = testutil.write_model_artifact(
            f"{root}/trained", LABELS, seed=4
        )
        cls.examples = testutil.write_examples_artifact(
            f"{root}/examples",
            {"validation": [[i % 7] for i in range(8)]},
            LABELS,
        )
        cls.outputs = base.execute(
            exporter.Exporter(),
            {
                "model": cls.model_artifact,
                "blessing": _blessing(f"{root}/blessing", True),
                "examples": cls.examples,
            },
            {
                "model": f"{root}/exported/model",
                "infra_blessing": f"{root}/exported/infra",
            },
            exporter.ExporterConfig(top_k=3, warmup_batch_sizes=(1, 4)),
        )
        cls.export_dir = os.path.join(
            cls.outputs["model"].uri, model_io.SERVING_DIR
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def test_infra_validation_blessed_in_a_fresh_process(self):
        infra = self.outputs["infra_blessing"]
        self.assertTrue(
            blessing_artifact.is_blessed(infra, blessing_artifact.INFRA)
        )
        self.assertTrue(
            tf.io.gfile.exists(os.path.join(infra.uri, "INFRA_BLESSED"))
        )
        self.assertEqual(infra.properties["num_requests"], 6)
        self.assertLess(
            infra.properties["max_abs_diff"], infra_validation.DEFAULT_ATOL
        )

    def test_exported_artifact_is_a_complete_model(self):
        props = self.outputs["model"].properties
        self.assertEqual(props["exported"], 1)
        self.assertEqual(props["serving_dir"], self.export_dir)
        # The serving limits the signatures enforce, for whoever serves it.
        self.assertEqual(
            props["max_image_pixels"], exporter.ExporterConfig.max_image_pixels
        )
        self.assertEqual(
            props["max_batch_size"], exporter.ExporterConfig.max_batch_size
        )
        self.assertEqual(props["source_model"], self.model_artifact.uri)
        model, spec, labels = model_io.load_model(self.outputs["model"].uri)
        self.assertEqual(labels, LABELS)
        self.assertAllClose(
            model.head.classifier.get_weights()[0],
            self.model.head.classifier.get_weights()[0],
        )

    def test_saved_model_cli_lists_the_three_signatures(self):
        result = subprocess.run(
            _saved_model_cli() + ["show", "--all", "--dir", self.export_dir],
            capture_output=True,
            text=True,
            check=True,
        )
        out = result.stdout
        for name in serving_model.SIGNATURES:
            self.assertIn(f"signature_def['{name}']", out)
        for key in (
            serving_model.IMAGE_BYTES_KEY,
            serving_model.IMAGES_KEY,
            serving_model.CLASSIFY_INPUT_KEY,
        ):
            self.assertIn(f"inputs['{key}'] tensor_info:", out)
        self.assertIn("Method name is: tensorflow/serving/classify", out)
        outputs = serving_model.PREDICT_OUTPUTS + serving_model.CLASSIFY_OUTPUTS
        for key in outputs:
            self.assertIn(f"outputs['{key}']", out)

    def test_signatures_answer_like_the_in_memory_model(self):
        loaded = tf.saved_model.load(self.export_dir)
        images = [testutil.class_image(i, i) for i in range(3)]
        # The in-memory model on the shared eval preprocessing.
        batch = tf.stack(
            [
                preprocessing.preprocess_for_eval(b, testutil.IMAGE_SIZE)
                for b in images
            ]
        )
        logits = self.model(batch, training=False).numpy()
        want = tf.nn.softmax(logits).numpy()
        order = np.argsort(-want, axis=1, kind="stable")[:, :3]
        names = np.array(LABELS)[order]

        out = loaded.signatures["serving_default"](
            image_bytes=tf.constant(images)
        )
        self.assertAllClose(out["probabilities"], want, atol=1e-5)
        self.assertAllEqual(out["top_k_ids"], order)
        self.assertAllEqual(out["top_k_labels"].numpy().astype(str), names)
        self.assertAllClose(
            out["top_k_scores"], np.take_along_axis(want, order, 1), atol=1e-5
        )

        uint8 = np.stack([tf.io.decode_jpeg(b).numpy()[:, :48] for b in images])
        out = loaded.signatures["image_tensor"](images=tf.constant(uint8))
        batch = tf.stack(
            [
                preprocessing.preprocess_image_for_eval(i, testutil.IMAGE_SIZE)
                for i in uint8
            ]
        )
        want_uint8 = tf.nn.softmax(self.model(batch, training=False)).numpy()
        self.assertAllClose(out["probabilities"], want_uint8, atol=1e-5)

        examples = serving_model.example_bytes(images)
        out = loaded.signatures["classify"](inputs=tf.constant(examples))
        self.assertAllEqual(out["classes"].numpy().astype(str), names)
        self.assertAllClose(
            out["scores"], np.take_along_axis(want, order, 1), atol=1e-5
        )

    def test_label_vocabulary_is_an_asset(self):
        path = os.path.join(self.export_dir, "assets", model_io.LABELS_FILE)
        self.assertEqual(model_io.read_labels(path), LABELS)

    def test_warmup_file_covers_every_signature_at_two_batch_sizes(self):
        logs = model_store.read_warmup(self.export_dir)
        self.assertLessEqual(len(logs), model_store.MAX_WARMUP_RECORDS)
        seen = set()
        for log in logs:
            if log.WhichOneof("log_type") == "classify_log":
                request = log.classify_log.request
                size = len(request.input.example_list.examples)
            else:
                request = log.predict_log.request
                (tensor,) = request.inputs.values()
                size = tensor.tensor_shape.dim[0].size
            seen.add((request.model_spec.signature_name, size))
        self.assertEqual(
            seen, {(s, n) for s in serving_model.SIGNATURES for n in (1, 4)}
        )

    def test_infra_validation_fails_when_outputs_differ(self):
        # The same export checked against a differently initialized model:
        # the fresh process answers, but not what this model would.
        other, spec = testutil.build_model(len(LABELS), seed=9)
        result = infra_validation.validate(
            self.export_dir, other, spec, LABELS, "coatnet", top_k=3
        )
        self.assertFalse(result.blessed)
        self.assertIn("scores differ", result.reason)

    def test_not_blessed_model_is_not_exported(self):
        root = f"{self.root}/refused"
        outputs = base.execute(
            exporter.Exporter(),
            {
                "model": self.model_artifact,
                "blessing": _blessing(f"{root}/blessing", False),
            },
            {"model": f"{root}/model", "infra_blessing": f"{root}/infra"},
            exporter.ExporterConfig(),
        )
        self.assertEqual(outputs["model"].properties["exported"], 0)
        self.assertEqual(
            outputs["model"].properties["source_model"],
            self.model_artifact.uri,
        )
        self.assertFalse(
            blessing_artifact.is_blessed(
                outputs["infra_blessing"], blessing_artifact.INFRA
            )
        )
        self.assertFalse(
            tf.io.gfile.exists(f"{root}/model/{model_io.SERVING_DIR}")
        )


class ExporterConfigTest(tf.test.TestCase):
    def test_limits_are_validated(self):
        with self.assertRaisesRegex(ValueError, "exceed max_batch_size 4"):
            exporter.ExporterConfig(warmup_batch_sizes=(1, 8), max_batch_size=4)
        with self.assertRaisesRegex(ValueError, "must be positive"):
            exporter.ExporterConfig(max_image_pixels=0)


class ServingModuleTest(tf.test.TestCase):
    def test_multi_label_uses_sigmoid(self):
        model, spec = testutil.build_model(5, multi_label=True, seed=2)
        path = os.path.join(self.get_temp_dir(), "labels.txt")
        model_io.write_labels(path, list("abcde"))
        module = serving_model.ServingModule(model, spec, path, top_k=10)
        image = testutil.class_image(1, 0)
        out = module.serve_image_bytes(tf.constant([image]))
        x = preprocessing.preprocess_for_eval(image, spec.image_size)
        logits = model(x[None], training=False)
        self.assertAllClose(
            out["probabilities"], tf.math.sigmoid(logits), atol=1e-6
        )
        # top_k is capped at the class count.
        self.assertEqual(out["top_k_ids"].shape, (1, 5))

    def test_compare_tolerates_near_ties_only(self):
        expected = {
            "probabilities": np.array([[0.5, 0.49995, 0.00005]]),
            "top_k_ids": np.array([[0, 1]]),
            "top_k_labels": np.array([["a", "b"]], dtype=object),
            "top_k_scores": np.array([[0.5, 0.49995]]),
        }
        swapped = {
            "probabilities": expected["probabilities"],
            "top_k_ids": np.array([[1, 0]]),
            "top_k_labels": np.array([[b"b", b"a"]], dtype=object),
            "top_k_scores": expected["top_k_scores"],
        }
        ok, _, _ = infra_validation.compare(expected, swapped, atol=1e-4)
        self.assertTrue(ok)  # 0.5 vs 0.49995: a tie within tolerance.
        ok, why, _ = infra_validation.compare(expected, swapped, atol=1e-6)
        self.assertFalse(ok)
        self.assertIn("top_k_ids", why)
        shifted = dict(expected, probabilities=expected["probabilities"] + 1e-3)
        ok, why, diff = infra_validation.compare(expected, shifted)
        self.assertFalse(ok)
        self.assertAllClose(diff, 1e-3)


if __name__ == "__main__":
    tf.test.main()
