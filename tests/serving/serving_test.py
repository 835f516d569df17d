"""The gRPC PredictionService on loopback serving the exported SavedModel.

The server is `serving.local_server` (servicers from tensorflow_serving.apis)
over a model store the Pusher's way; the client is `serving.client`, as
users call TF Serving.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import tensorflow as tf

from artifacts import model as model_io
from artifacts import model_store
from components import preprocessing
from components.exporter import component as exporter
from components.exporter import serving_model
from serving import client as client_lib
from serving import local_server, servables
from tests import child_env
from tests.serving import testutil

# Spaces and non-ASCII: label names must survive the asset, the lookup
# table and the wire as UTF-8.
LABELS = ["tabby cat", "golden retriever", "café au lait", "tree", "boat"]
NAME = "coatnet"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class ServingTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # A fresh directory per run: concurrent runs must not share one.
        root = cls.root = tempfile.mkdtemp(
            prefix="serving_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        artifact, cls.model = testutil.write_model_artifact(
            f"{root}/trained", LABELS, seed=5
        )
        cls.spec = model_io.read_spec(artifact.uri)
        cls.export_dir = exporter.export(
            artifact.uri,
            f"{root}/exported",
            cls.model,
            cls.spec,
            exporter.ExporterConfig(top_k=3, warmup_batch_sizes=(1, 2)),
        )
        cls.base = f"{root}/models/{NAME}"
        model_store.write_version(cls.base, cls.export_dir, 1)
        cls.server = local_server.LocalServer(
            [servables.ModelSource(NAME, cls.base, num_versions=1)]
        ).start()
        cls.client = client_lib.ServingClient(
            cls.server.address, NAME, retries=0
        )
        cls.images = []
        for i in range(3):
            path = os.path.join(root, f"image{i}.jpg")
            with open(path, "wb") as f:
                f.write(testutil.class_image(i, i))
            cls.images.append(path)
        cls.images.append(testutil.write_png(os.path.join(root, "image.png")))

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def _reference(self, paths):
        """Probabilities of the in-process Keras model."""
        batch = tf.stack(
            [
                preprocessing.preprocess_for_eval(
                    tf.io.read_file(p), self.spec.image_size
                )
                for p in paths
            ]
        )
        return tf.nn.softmax(self.model(batch, training=False)).numpy()

    def test_predictions_equal_the_in_process_model(self):
        predictions = self.client.predict_images(
            self.images, with_probabilities=True
        )
        want = self._reference(self.images)
        self.assertLen(predictions, len(self.images))
        for p, probs in zip(predictions, want):
            self.assertAllClose(p.probabilities, probs, atol=1e-5)
            order = np.argsort(-probs, kind="stable")[:3]
            self.assertEqual([t[2] for t in p.top_k], list(order))
            self.assertEqual(
                [t[0] for t in p.top_k], [LABELS[i] for i in order]
            )
            self.assertAllClose(
                [t[1] for t in p.top_k], probs[order], atol=1e-5
            )

    def test_corrupt_image_is_invalid_argument_and_serving_goes_on(self):
        for bad in (b"not an image", b"", b"\xff\xd8\xff\xe0garbage"):
            with self.assertRaises(client_lib.ServingError) as caught:
                self.client.predict_images([bad])
            error = caught.exception
            self.assertEqual(error.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(self.server.address, str(error))
            self.assertIn(f"'{NAME}'", str(error))
        good = self.client.predict_images(self.images[:1])
        self.assertLen(good, 1)

    def test_unknown_model_or_version_is_not_found(self):
        with client_lib.ServingClient(self.server.address, "nope") as other:
            for call in (
                lambda: other.predict_images(self.images[:1]),
                other.get_model_status,
                other.get_model_metadata,
            ):
                with self.assertRaises(client_lib.ServingError) as caught:
                    call()
                self.assertEqual(
                    caught.exception.code, grpc.StatusCode.NOT_FOUND
                )
        with client_lib.ServingClient(
            self.server.address, NAME, version=42
        ) as pinned:
            with self.assertRaises(client_lib.ServingError) as caught:
                pinned.predict_images(self.images[:1])
            self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_bad_requests_are_rejected_clearly(self):
        with self.assertRaises(client_lib.ServingError) as caught:
            self.client.predict(
                {"images": np.zeros([1, 8, 8, 3], np.float32)}, "image_tensor"
            )
        self.assertEqual(
            caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT
        )
        self.assertIn("uint8", caught.exception.details)
        with self.assertRaises(client_lib.ServingError) as caught:
            self.client.predict(
                {"pixels": np.zeros([1], np.uint8)}, "image_tensor"
            )
        self.assertIn("expected ['images']", caught.exception.details)
        with self.assertRaises(client_lib.ServingError) as caught:
            self.client.predict({"x": [1.0]}, "no_such_signature")
        self.assertEqual(
            caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION
        )

    def test_image_tensor_signature(self):
        images = np.stack(
            [tf.io.decode_jpeg(testutil.class_image(1, 0)).numpy()] * 2
        )
        out = self.client.predict({"images": images}, "image_tensor")
        want = tf.nn.softmax(
            self.model(
                tf.stack(
                    [
                        preprocessing.preprocess_image_for_eval(i, 32)
                        for i in images
                    ]
                ),
                training=False,
            )
        ).numpy()
        self.assertAllClose(out["probabilities"], want, atol=1e-5)

    def test_classify_with_tf_examples(self):
        examples = [
            tf.train.Example.FromString(b)
            for b in (
                testutil.example(testutil.class_image(i, 0), [i])
                for i in range(2)
            )
        ]
        rows = self.client.classify(examples)
        want = self._reference_bytes(
            [testutil.class_image(i, 0) for i in range(2)]
        )
        self.assertLen(rows, 2)
        for row, probs in zip(rows, want):
            order = np.argsort(-probs, kind="stable")[:3]
            self.assertEqual(
                [label for label, _ in row], [LABELS[i] for i in order]
            )
            self.assertAllClose([s for _, s in row], probs[order], atol=1e-5)

    def _reference_bytes(self, images):
        batch = tf.stack(
            [preprocessing.preprocess_for_eval(b, 32) for b in images]
        )
        return tf.nn.softmax(self.model(batch, training=False)).numpy()

    def test_metadata_lists_the_signatures(self):
        metadata = self.client.get_model_metadata()
        for name in ("serving_default", "image_tensor", "classify"):
            self.assertIn(name, metadata)
        self.assertEqual(
            metadata["serving_default"]["inputs"],
            {"image_bytes": ("string", [-1])},
        )
        self.assertEqual(
            metadata["image_tensor"]["inputs"]["images"],
            ("uint8", [-1, -1, -1, 3]),
        )
        self.assertEqual(
            metadata["serving_default"]["outputs"]["probabilities"],
            ("float32", [-1, len(LABELS)]),
        )
        self.assertEqual(
            metadata["classify"]["method"], "tensorflow/serving/classify"
        )

    def test_status_reports_the_available_version(self):
        self.assertEqual(
            self.client.get_model_status(),
            [{"version": 1, "state": "AVAILABLE", "error_message": ""}],
        )
        self.assertEqual(self.client.wait_until_available(5), 1)

    def test_large_requests_fit_and_small_limits_are_reported(self):
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
        big = tf.io.encode_png(noise).numpy()
        self.assertGreater(len(big), 4 << 20)  # Above gRPC's 4 MB default.
        self.assertLen(self.client.predict_images([big]), 1)
        with client_lib.ServingClient(
            self.server.address, NAME, max_message_bytes=1 << 20, retries=0
        ) as small:
            with self.assertRaises(client_lib.ServingError) as caught:
                small.predict_images([big])
            self.assertEqual(
                caught.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED
            )

    def test_new_versions_are_picked_up_and_old_ones_unloaded(self):
        base = f"{self.root}/models/versions"
        model_store.write_version(base, self.export_dir, 1)
        with local_server.LocalServer(
            [servables.ModelSource("versions", base)], warmup=False
        ) as server:
            with client_lib.ServingClient(server.address, "versions") as c:
                self.assertEqual(c.wait_until_available(30), 1)
                # A half-copied version (no saved_model.pb yet) is ignored.
                os.makedirs(f"{base}/3/variables")
                model_store.write_version(base, self.export_dir, 2)
                server.refresh()
                states = {
                    s["version"]: s["state"] for s in c.get_model_status()
                }
                self.assertEqual(states, {1: "END", 2: "AVAILABLE"})
                response = c._predictions.Predict(
                    _predict_request("versions", self.images[0]), timeout=30
                )
                self.assertEqual(response.model_spec.version.value, 2)

    def test_a_version_failing_warmup_leaves_the_old_one_serving(self):
        base = f"{self.root}/models/keep"
        model_store.write_version(base, self.export_dir, 1)
        broken = f"{self.root}/broken_export"
        shutil.copytree(self.export_dir, broken)
        # Loads, but its warmup request fails: the load fails.
        request = _predict_request("keep", self.images[0])
        request.inputs["image_bytes"].string_val[0] = b"not an image"
        model_store.write_warmup(broken, [serving_model._predict_log(request)])
        with local_server.LocalServer(
            [servables.ModelSource("keep", base)]
        ) as server:
            with client_lib.ServingClient(server.address, "keep") as c:
                self.assertEqual(c.wait_until_available(30), 1)
                model_store.write_version(base, broken, 2)
                server.refresh()
                status = {s["version"]: s for s in c.get_model_status()}
                self.assertEqual(status[1]["state"], "AVAILABLE")
                self.assertEqual(status[2]["state"], "END")
                self.assertIn("Image refused", status[2]["error_message"])
                response = c._predictions.Predict(
                    _predict_request("keep", self.images[0]), timeout=30
                )
                self.assertEqual(response.model_spec.version.value, 1)
                # A good newer version replaces it once warmed up.
                model_store.write_version(base, self.export_dir, 3)
                server.refresh()
                states = {
                    s["version"]: s["state"] for s in c.get_model_status()
                }
                self.assertEqual(states, {1: "END", 2: "END", 3: "AVAILABLE"})

    def test_unavailable_is_retried_until_the_server_is_up(self):
        port = _free_port()
        address = f"localhost:{port}"
        with client_lib.ServingClient(address, NAME, retries=0) as impatient:
            with self.assertRaises(client_lib.ServingError) as caught:
                impatient.get_model_status()
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
            self.assertIn(address, str(caught.exception))
        server = local_server.LocalServer(
            [servables.ModelSource(NAME, self.base)], port=port, warmup=False
        )
        starter = threading.Timer(1.0, server.start)
        starter.start()
        try:
            with client_lib.ServingClient(
                address, NAME, retries=8, backoff=0.2
            ) as patient:
                started = time.monotonic()
                predictions = patient.predict_images(self.images[:1])
                self.assertGreater(time.monotonic() - started, 0.9)
                self.assertLen(predictions, 1)
        finally:
            starter.join()
            server.stop()

    def test_mutual_tls(self):
        tls = testutil.write_tls_files(self.create_tempdir().full_path)
        credentials = local_server.server_credentials(
            tls["server_cert"], tls["server_key"], tls["ca"]
        )
        with local_server.LocalServer(
            [servables.ModelSource(NAME, self.base)],
            warmup=False,
            server_credentials=credentials,
        ) as server:
            secure = client_lib.ServingClient(
                server.address,
                NAME,
                tls=client_lib.TlsOptions(
                    root_certificates=tls["ca"],
                    client_certificate=tls["client_cert"],
                    client_key=tls["client_key"],
                ),
            )
            with secure:
                self.assertEqual(secure.wait_until_available(30), 1)
            # Without a client certificate the handshake is refused.
            anonymous = client_lib.ServingClient(
                server.address,
                NAME,
                retries=0,
                tls=client_lib.TlsOptions(root_certificates=tls["ca"]),
            )
            with anonymous, self.assertRaises(client_lib.ServingError):
                anonymous.get_model_status()

    def test_table_format(self):
        predictions = [
            client_lib.Prediction([("cat", 0.75, 3), ("dog", 0.25, 1)]),
            client_lib.Prediction([("boat", 1.0, 0)]),
        ]
        table = client_lib.format_table(["a.jpg", "bb.png"], predictions)
        self.assertEqual(
            table.splitlines(),
            [
                "image   rank  label  score   id",
                "a.jpg   1     cat    0.7500  3",
                "a.jpg   2     dog    0.2500  1",
                "bb.png  1     boat   1.0000  0",
            ],
        )

    def test_client_cli_prints_json_and_names_the_server_on_errors(self):
        command = [
            sys.executable,
            "-m",
            "serving.client_main",
            f"--server={self.server.address}",
            f"--model={NAME}",
            "--top_k=2",
        ]
        env = child_env.python_env()
        out = subprocess.run(
            command + ["--format=json"] + self.images[:2],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        result = json.loads(out)
        want = self._reference(self.images[:2])
        for entry, path, probs in zip(result, self.images, want):
            self.assertEqual(entry["image"], path)
            top = np.argsort(-probs, kind="stable")[:2]
            self.assertEqual(
                [t["label"] for t in entry["top_k"]], [LABELS[i] for i in top]
            )
        failed = subprocess.run(
            command[:3]
            + ["--server=localhost:1", "--retries=0", self.images[0]],
            capture_output=True,
            text=True,
            env=env,
        )
        self.assertEqual(failed.returncode, 1)
        self.assertIn("localhost:1", failed.stderr)


def _predict_request(name, path):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    with open(path, "rb") as f:
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto([f.read()], dtype=tf.string)
        )
    return request


class ConfigTest(tf.test.TestCase):
    def test_models_config_version_policies(self):
        sources = servables.sources_from_config(
            """
            model_config_list {
              config { name: "a" base_path: "/m/a" model_platform: "tensorflow"
                       model_version_policy { latest { num_versions: 2 } }
                       version_labels { key: "stable" value: 4 } }
              config { name: "b" base_path: "/m/b"
                       model_version_policy { specific { versions: 3 } } }
              config { name: "c" base_path: "/m/c"
                       model_version_policy { all {} } }
            }
            """
        )
        a, b, c = sources
        self.assertEqual(a.wanted([1, 4, 7]), [4, 7])
        self.assertEqual(a.version_labels, {"stable": 4})
        self.assertEqual(b.wanted([1, 3, 7]), [3])
        self.assertEqual(c.wanted([7, 1]), [1, 7])
        with self.assertRaisesRegex(ValueError, "Invalid models.config"):
            servables.sources_from_config("model_config_list { bogus: 1 }")

    def test_repository_configs_parse(self):
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        here = os.path.dirname(os.path.abspath(__file__))
        serving_dir = os.path.join(
            os.path.dirname(os.path.dirname(here)), "serving"
        )
        with open(os.path.join(serving_dir, "models.config")) as f:
            text = f.read()
        config = text_format.Parse(
            text, model_server_config_pb2.ModelServerConfig()
        )
        names = [m.name for m in config.model_config_list.config]
        self.assertEqual(names, ["coatnet", "coatnet_21k"])
        self.assertEqual(
            servables.sources_from_config(text)[0].wanted([1, 2, 3]), [2, 3]
        )
        with open(os.path.join(serving_dir, "batching.config")) as f:
            batching = text_format.Parse(f.read(), _batching_parameters()())
        self.assertEqual(batching.max_batch_size.value, 32)
        sizes = list(batching.allowed_batch_sizes)
        self.assertEqual(sizes, sorted(sizes))
        self.assertEqual(sizes[-1], batching.max_batch_size.value)


def _batching_parameters():
    """BatchingParameters, built from its .proto definition.

    tensorflow-serving-api does not ship session_bundle_config_pb2, so the
    message is declared here field by field, transcribed from
    tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    (wrapper types included), and the repository's batching.config is
    parsed against it.
    """
    from google.protobuf import (
        descriptor_pb2,
        descriptor_pool,
        message_factory,
        wrappers_pb2,
    )

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="session_bundle_config_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ]
    for name, number, type_name in wrapped:
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=type_name,
            label=field.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        type=field.TYPE_INT64,
        label=field.LABEL_REPEATED,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field.TYPE_BOOL,
        label=field.LABEL_OPTIONAL,
    )
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


if __name__ == "__main__":
    tf.test.main()
