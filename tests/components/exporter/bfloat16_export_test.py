"""The Exporter's bfloat16 serving precision: contract, values, top-1 gate."""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from artifacts import blessing as blessing_artifact
from artifacts import examples as examples_lib
from artifacts import model as model_io
from artifacts import model_store
from components import base, preprocessing
from components.exporter import component as exporter
from components.exporter import infra_validation, precision_check, serving_model
from tests.serving import testutil

LABELS = [f"label {i}" for i in range(7)]
# Images whose float32 top-1 leads the runner-up by this much: bfloat16
# (which moves this model's probabilities by ~1e-2 at most) cannot swap
# them, so the top-1 figures agree on any CPU's bfloat16 kernels.
CLEAR_MARGIN = 0.08
NUM_EXAMPLES = 14


def _float32_probabilities(model, images) -> np.ndarray:
    batch = tf.stack(
        [
            preprocessing.preprocess_for_eval(b, testutil.IMAGE_SIZE)
            for b in images
        ]
    )
    return tf.nn.softmax(model(batch, training=False)).numpy()


def _clear_images(model) -> tuple[list, list]:
    """Images the float32 model ranks clearly, and their class ids."""
    images, labels = [], []
    index = 0
    while len(images) < NUM_EXAMPLES:
        label = index % len(LABELS)
        image = testutil.class_image(label, index)
        index += 1
        top = np.sort(_float32_probabilities(model, [image])[0])[::-1]
        if top[0] - top[1] >= CLEAR_MARGIN:
            images.append(image)
            labels.append(label)
        if index > 2000:
            raise AssertionError("Too few clearly ranked images.")
    return images, labels


def _write_examples(
    uri: str, images, labels, names=LABELS
) -> tuple[base.Artifact, list, list]:
    """A validation split; `labels` index the model's LABELS, and are
    written as ids into `names` (the data's own label order)."""
    data_ids = [names.index(LABELS[y]) for y in labels]
    examples_lib.write_split(
        uri,
        "validation",
        (testutil.example(i, [y]) for i, y in zip(images, data_ids)),
        2,
        examples_lib.GZIP,
    )
    examples_lib.write_labels(uri, names)
    artifact = base.Artifact(
        base.EXAMPLES,
        uri,
        {
            "split_names": ["validation"],
            "multi_label": 0,
            "num_classes": len(LABELS),
            "compression": examples_lib.GZIP,
        },
    )
    artifact.write()
    return artifact, images, labels


def _bfloat16_nodes(export_dir: str) -> int:
    """Nodes of the SavedModel's functions with a bfloat16 type attribute."""
    proto = model_store.read_saved_model(export_dir)
    count = 0
    for meta_graph in proto.meta_graphs:
        for function in meta_graph.graph_def.library.function:
            for node in function.node_def:
                for attr in node.attr.values():
                    if attr.type == types_pb2.DT_BFLOAT16 or (
                        types_pb2.DT_BFLOAT16 in attr.list.type
                    ):
                        count += 1
                        break
    return count


def _weight_casts(export_dir: str) -> int:
    """Casts in the SavedModel's functions of a value read from a variable."""
    proto = model_store.read_saved_model(export_dir)
    count = 0
    for meta_graph in proto.meta_graphs:
        for function in meta_graph.graph_def.library.function:
            ops = {node.name: node.op for node in function.node_def}
            for node in function.node_def:
                source = node.input[0].split(":")[0] if node.input else ""
                if node.op == "Cast" and ops.get(source) == "ReadVariableOp":
                    count += 1
    return count


class BFloat16ExportTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.root = tempfile.mkdtemp(
            prefix="bfloat16_export_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        cls.model_artifact, cls.model = testutil.write_model_artifact(
            f"{root}/trained", LABELS, seed=4
        )
        images, labels = _clear_images(cls.model)
        cls.examples, cls.images, cls.labels = _write_examples(
            f"{root}/examples", images, labels
        )
        cls.config = exporter.ExporterConfig(
            top_k=3, warmup_batch_sizes=(1, 4), serving_precision="bfloat16"
        )
        cls.outputs = cls.run_exporter("bf16", cls.config)
        cls.export_dir = model_io.serving_dir(cls.outputs["model"].uri)
        # The float32 export of the same model, for the contract.
        _, spec, _ = model_io.load_model(cls.model_artifact.uri)
        cls.float32_dir = exporter.export(
            cls.model_artifact.uri,
            f"{root}/float32",
            cls.model,
            spec,
            exporter.ExporterConfig(top_k=3, warmup_batch_sizes=(1, 4)),
        )

    @classmethod
    def run_exporter(cls, name: str, config, with_examples=True) -> dict:
        inputs = {"model": cls.model_artifact}
        if with_examples:
            inputs["examples"] = cls.examples
        return base.execute(
            exporter.Exporter(),
            inputs,
            {
                "model": f"{cls.root}/{name}/model",
                "infra_blessing": f"{cls.root}/{name}/infra",
            },
            config,
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def test_blessed_with_both_top1_figures(self):
        infra = self.outputs["infra_blessing"]
        self.assertTrue(
            blessing_artifact.is_blessed(infra, blessing_artifact.INFRA),
            infra.properties.get("reason"),
        )
        props = infra.properties
        self.assertEqual(props["serving_precision"], "bfloat16")
        self.assertEqual(props["top1_examples"], NUM_EXAMPLES)
        self.assertEqual(props["top1_split"], "validation")
        # The figures are each model's own top-1 on the split.
        want = _float32_probabilities(self.model, self.images).argmax(1)
        self.assertAllClose(
            props["top1_float32"], np.mean(want == np.array(self.labels))
        )
        loaded = tf.saved_model.load(self.export_dir)
        served = loaded.signatures["serving_default"](
            image_bytes=tf.constant(self.images)
        )["probabilities"].numpy()
        self.assertAllClose(
            props["top1_export"],
            np.mean(served.argmax(1) == np.array(self.labels)),
        )
        self.assertIn(
            f"float32 model {props['top1_float32']:.4f}", props["reason"]
        )
        # Served in bfloat16: not float32's last bits, within bf16's bound.
        self.assertGreater(props["max_abs_diff"], infra_validation.DEFAULT_ATOL)
        self.assertLessEqual(
            props["max_abs_diff"], infra_validation.DEFAULT_BFLOAT16_ATOL
        )
        self.assertEqual(
            self.outputs["model"].properties["serving_precision"], "bfloat16"
        )

    def test_top1_maps_the_datas_labels_by_name(self):
        # The same images with the class names listed in reverse order:
        # the ids differ, the classes and so the figures do not.
        reversed_names = LABELS[::-1]
        examples, _, _ = _write_examples(
            f"{self.root}/reversed", self.images, self.labels, reversed_names
        )
        check = precision_check.top1_check(
            self.export_dir,
            self.model,
            testutil.IMAGE_SIZE,
            LABELS,
            examples,
            "validation",
            max_examples=100,
            max_drop=0.005,
            batch_size=4,
        )
        props = self.outputs["infra_blessing"].properties
        self.assertEqual(check.num_examples, NUM_EXAMPLES)
        self.assertAllClose(check.top1_float32, props["top1_float32"])
        self.assertAllClose(check.top1_export, props["top1_export"])
        capped = precision_check.top1_check(
            self.export_dir,
            self.model,
            testutil.IMAGE_SIZE,
            LABELS,
            examples,
            "validation",
            max_examples=5,
            max_drop=0.005,
        )
        self.assertEqual(capped.num_examples, 5)

    def test_signature_contract_is_the_float32_exports(self):
        def signatures(export_dir):
            proto = model_store.read_saved_model(export_dir)
            (meta_graph,) = proto.meta_graphs
            return {
                name: (
                    sig.method_name,
                    {
                        k: (v.dtype, str(v.tensor_shape))
                        for k, v in sig.inputs.items()
                    },
                    {
                        k: (v.dtype, str(v.tensor_shape))
                        for k, v in sig.outputs.items()
                    },
                )
                for name, sig in meta_graph.signature_def.items()
                if not name.startswith("__")
            }

        bf16, fp32 = signatures(self.export_dir), signatures(self.float32_dir)
        self.assertEqual(set(bf16), set(serving_model.SIGNATURES))
        self.assertEqual(bf16, fp32)
        outputs = bf16[serving_model.PREDICT_SIGNATURE][2]
        self.assertEqual(outputs["probabilities"][0], types_pb2.DT_FLOAT)
        self.assertEqual(outputs["top_k_scores"][0], types_pb2.DT_FLOAT)

    def test_graph_computes_in_bfloat16(self):
        self.assertGreater(_bfloat16_nodes(self.export_dir), 10)
        self.assertEqual(_bfloat16_nodes(self.float32_dir), 0)

    def test_weights_are_the_checkpoint_in_the_dtype_they_are_read_in(self):
        loaded = tf.saved_model.load(self.export_dir)
        # (self.model served the float32 export, which froze it too.)
        trained = {
            v.name: v
            for v in self.model.variables
            if "/inference/" not in v.name
        }
        stored = {tf.bfloat16: [], tf.float32: []}
        frozen = []
        for variable in loaded.model_variables:
            if "/inference/" in variable.name:
                frozen.append(variable.name)
                continue
            stored[variable.dtype].append(variable.name.split("/")[-1])
            # Bit for bit the checkpoint's value, or its bfloat16 rounding
            # (which widens back to float32 exactly).
            weight = trained.pop(variable.name)
            want = tf.cast(tf.cast(weight, variable.dtype), tf.float32)
            self.assertAllEqual(tf.cast(variable, tf.float32), want)
        self.assertContainsSubset(
            {"kernel:0", "depthwise_kernel:0"}, stored[tf.bfloat16]
        )
        # Norms and the float32 classifier.
        self.assertContainsSubset(
            {"gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"},
            stored[tf.float32],
        )
        classifier = [
            v for v in loaded.model_variables if "classifier/kernel" in v.name
        ]
        self.assertEqual([v.dtype for v in classifier], [tf.float32])
        # Not saved: the weights of coatnet-tiny's three Transformer blocks
        # that inference reads only as the frozen copies.
        self.assertEqual(
            sorted(n.split("/", 2)[2] for n in trained),
            sorted(
                [
                    "attention/qkv/bias:0",
                    "attention/qkv/kernel:0",
                    "attention/relative_position_bias:0",
                    "attn_norm/gamma:0",
                    "attn_norm/beta:0",
                    "ffn_norm/gamma:0",
                    "ffn_norm/beta:0",
                ]
                * 3
            ),
        )
        self.assertLen(frozen, 3 * 7 + 6 * 2)
        # Saved in the model's own order, which every process shares (a
        # traced function's capture order is not), so that two exports of
        # one model write the same variable files.
        order = [v.name for v in self.model.variables]
        positions = [order.index(v.name) for v in loaded.model_variables]
        self.assertEqual(positions, sorted(positions))

    def test_graph_casts_no_weight_per_call(self):
        self.assertEqual(_weight_casts(self.export_dir), 0)
        # What the mixed model does with float32 variables: a cast of
        # every kernel on every call.
        mixed = serving_model.store_read_dtype
        try:
            serving_model.store_read_dtype = lambda model, dtype: 0
            outputs = self.run_exporter("bf16_casting", self.config, False)
        finally:
            serving_model.store_read_dtype = mixed
        casting = model_io.serving_dir(outputs["model"].uri)
        self.assertGreater(_weight_casts(casting), 10)

    def test_probabilities_close_to_float32(self):
        images = [testutil.class_image(i, 100 + i) for i in range(5)]
        want = _float32_probabilities(self.model, images)
        loaded = tf.saved_model.load(self.export_dir)
        out = loaded.signatures["serving_default"](
            image_bytes=tf.constant(images)
        )
        self.assertEqual(out["probabilities"].dtype, tf.float32)
        got = out["probabilities"].numpy()
        self.assertAllClose(got.sum(axis=1), np.ones(5), atol=1e-5)
        diff = np.abs(got - want).max()
        self.assertLess(diff, infra_validation.DEFAULT_BFLOAT16_ATOL)
        self.assertGreater(diff, 1e-5)

    def test_a_negative_allowed_drop_refuses_the_export(self):
        config = exporter.ExporterConfig(
            top_k=3,
            warmup_batch_sizes=(1, 4),
            serving_precision="bfloat16",
            max_top1_drop=-1.0,
        )
        outputs = self.run_exporter("refused", config)
        infra = outputs["infra_blessing"]
        self.assertFalse(
            blessing_artifact.is_blessed(infra, blessing_artifact.INFRA)
        )
        self.assertTrue(
            tf.io.gfile.exists(os.path.join(infra.uri, "INFRA_NOT_BLESSED"))
        )
        props = infra.properties
        reason = props["reason"]
        self.assertIn(f"bfloat16 export {props['top1_export']:.4f}", reason)
        self.assertIn(f"float32 model {props['top1_float32']:.4f}", reason)
        self.assertIn("more than the allowed -1", reason)

    def test_without_examples_the_export_is_not_infra_blessed(self):
        outputs = self.run_exporter("unchecked", self.config, False)
        infra = outputs["infra_blessing"]
        self.assertFalse(
            blessing_artifact.is_blessed(infra, blessing_artifact.INFRA)
        )
        self.assertIn("--examples", infra.properties["reason"])
        self.assertNotIn("top1_export", infra.properties)


class PrecisionCheckTest(tf.test.TestCase):
    def test_verdict(self):
        check = precision_check.Top1Check("validation", 200, 0.80, 0.796, 0.005)
        self.assertTrue(check.passed)
        self.assertAllClose(check.drop, 0.004)
        worse = precision_check.Top1Check("validation", 200, 0.80, 0.79, 0.005)
        self.assertFalse(worse.passed)
        self.assertIn("more than", worse.reason("bfloat16"))
        empty = precision_check.Top1Check(
            "validation", 0, np.nan, np.nan, 0.005
        )
        self.assertFalse(empty.passed)
        self.assertIn("No labelled images", empty.reason("bfloat16"))


class ExporterConfigTest(tf.test.TestCase):
    def test_serving_precision_is_validated(self):
        with self.assertRaisesRegex(ValueError, "serving_precision='float16'"):
            exporter.ExporterConfig(serving_precision="float16")
        with self.assertRaisesRegex(ValueError, "precision_check_examples"):
            exporter.ExporterConfig(precision_check_examples=0)

    def test_set_override_reaches_the_field(self):
        # What `--set=serving_precision=bfloat16` (and, in the pipelines,
        # `--set=exporter.serving_precision=bfloat16`) applies.
        config = base.apply_overrides(
            exporter.ExporterConfig(),
            {"serving_precision": "bfloat16", "max_top1_drop": "0.01"},
        )
        self.assertEqual(config.serving_precision, "bfloat16")
        self.assertEqual(config.max_top1_drop, 0.01)
        with self.assertRaisesRegex(ValueError, "expected one of"):
            base.apply_overrides(
                exporter.ExporterConfig(), {"serving_precision": "int8"}
            )


if __name__ == "__main__":
    tf.test.main()
