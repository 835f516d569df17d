"""The local server against hostile clients, over gRPC, in its own process.

The server (`serving.local_server_main`) serves an exported coatnet-tiny
whose signatures refuse images over 2 megapixels and batches over 16, with
2 worker threads, 4 admitted calls and 8 MB messages. Requests go through
the official `tensorflow_serving.apis` stubs (and a raw channel for bytes
that are not a valid proto). Every abusive request must be answered with
INVALID_ARGUMENT or RESOURCE_EXHAUSTED; after each kind a good request is
still answered correctly, and the server's peak resident memory (VmHWM in
/proc/<pid>/status, reset after warm-up) stays under its idle size plus
MEMORY_BOUND_BYTES.

The bound: 4 admitted calls x 8 MB messages, plus 2 running calls x 4
decodes x 2 MP x ~16 bytes per pixel of decode and float32 crop, plus
interpreter and gRPC slack, well under 1 GiB. Before the checks, the
amplification request alone took a server to 23.6 GB.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    predict_pb2,
    prediction_service_pb2_grpc,
)

from artifacts import model as model_io
from artifacts import model_store
from components import preprocessing
from components.exporter import component as exporter
from components.exporter import serving_model
from tests import child_env
from tests.serving import testutil

LABELS = ["a", "b", "c", "d"]
NAME = "coatnet"
MAX_PIXELS = 2_000_000
MAX_BATCH = 16
MESSAGE_BYTES = 8 << 20
THREADS = 2
ADMITTED = 4
MEMORY_BOUND_BYTES = 1 << 30
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _string_request(values, shape=None, signature="serving_default"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = signature
    tensor = request.inputs["image_bytes"]
    tensor.dtype = tf.string.as_datatype_enum
    for size in shape if shape is not None else [len(values)]:
        tensor.tensor_shape.dim.add(size=size)
    tensor.string_val.extend(values)
    return request


class AbuseTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.root = tempfile.mkdtemp(
            prefix="abuse_test_", dir=os.environ.get("TEST_TMPDIR")
        )
        artifact, cls.model = testutil.write_model_artifact(
            f"{root}/trained", LABELS, seed=3
        )
        export_dir = exporter.export(
            artifact.uri,
            f"{root}/exported",
            cls.model,
            model_io.read_spec(artifact.uri),
            exporter.ExporterConfig(
                top_k=2,
                warmup_batch_sizes=(1, 2),
                max_image_pixels=MAX_PIXELS,
                max_batch_size=MAX_BATCH,
            ),
        )
        model_store.write_version(f"{root}/models/{NAME}", export_dir, 1)
        port_file = f"{root}/port"
        cls.log = open(f"{root}/server.log", "wb")
        cls.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.local_server_main",
                "--port=0",
                f"--port_file={port_file}",
                f"--model_name={NAME}",
                f"--model_base_path={root}/models/{NAME}",
                "--file_system_poll_wait_seconds=0",
                f"--grpc_max_threads={THREADS}",
                f"--max_concurrent_rpcs={ADMITTED}",
                f"--max_message_bytes={MESSAGE_BYTES}",
            ],
            stdout=cls.log,
            stderr=subprocess.STDOUT,
            env=child_env.python_env(),
        )
        deadline = time.monotonic() + 300
        while not os.path.exists(port_file):
            if cls.server.poll() is not None or time.monotonic() > deadline:
                cls._stop_server()
                raise RuntimeError(f"Server did not start: {cls._log_tail()}")
            time.sleep(0.2)
        with open(port_file) as f:
            cls.address = f"localhost:{f.read().strip()}"
        # The client may send more than the server accepts.
        cls.channel = grpc.insecure_channel(
            cls.address,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        cls.stub = prediction_service_pb2_grpc.PredictionServiceStub(
            cls.channel
        )
        cls.good = [testutil.class_image(i, i) for i in range(3)]
        batch = tf.stack(
            [preprocessing.preprocess_for_eval(b, 32) for b in cls.good]
        )
        cls.want = tf.nn.softmax(cls.model(batch, training=False)).numpy()
        for _ in range(3):  # Warm: first calls build caches and pools.
            cls.stub.Predict(_string_request(cls.good), timeout=120)
        cls.idle_kb = _status_kb(cls.server.pid, "VmRSS")
        # Reset the peak (VmHWM) to the current size, so the bound covers
        # the abuse, not the model load.
        with open(f"/proc/{cls.server.pid}/clear_refs", "w") as f:
            f.write("5")

    @classmethod
    def _log_tail(cls) -> str:
        cls.log.flush()
        with open(cls.log.name, errors="replace") as f:
            return " | ".join(f.read().splitlines()[-20:])

    @classmethod
    def _stop_server(cls):
        if cls.server.poll() is None:
            cls.server.terminate()
            try:
                cls.server.wait(10)
            except subprocess.TimeoutExpired:
                cls.server.kill()
                cls.server.wait()
        cls.log.close()

    @classmethod
    def tearDownClass(cls):
        peak = _status_kb(cls.server.pid, "VmHWM")
        print(
            f"\nabuse_test: server idle RSS {cls.idle_kb / 1024:.0f} MiB, "
            f"peak under abuse {peak / 1024:.0f} MiB "
            f"(+{(peak - cls.idle_kb) / 1024:.0f} MiB; bound "
            f"+{MEMORY_BOUND_BYTES >> 20} MiB)",
            file=sys.stderr,
        )
        cls.channel.close()
        cls._stop_server()
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def assert_refused(self, call, codes=(INVALID,)):
        with self.assertRaises(grpc.RpcError) as caught:
            call()
        self.assertIn(caught.exception.code(), codes, caught.exception)
        return caught.exception.details()

    def assert_healthy(self):
        """Alive, answering correctly, and within the memory bound."""
        self.assertIsNone(self.server.poll(), self._log_tail())
        response = self.stub.Predict(_string_request(self.good), timeout=120)
        probabilities = tf.make_ndarray(response.outputs["probabilities"])
        self.assertAllClose(probabilities, self.want, atol=1e-5)
        peak = _status_kb(self.server.pid, "VmHWM") * 1024
        self.assertLess(
            peak - self.idle_kb * 1024,
            MEMORY_BOUND_BYTES,
            f"peak {peak >> 20} MiB, idle {self.idle_kb >> 10} MiB",
        )

    def test_amplification_is_refused_before_expanding(self):
        tiny = tf.io.encode_jpeg(np.zeros([8, 8, 3], np.uint8)).numpy()
        for size in (5_000_000, 200_000, 2):
            request = _string_request([tiny], shape=[size])
            self.assertLess(request.ByteSize(), 1000)
            details = self.assert_refused(
                lambda r=request: self.stub.Predict(r, timeout=60)
            )
            self.assertIn("1 values in string_val", details)
        # Many empty strings: 2 bytes each on the wire, ~70 in memory.
        many = _string_request([b""] * 1_000_000)
        self.assertLess(many.ByteSize(), MESSAGE_BYTES)
        details = self.assert_refused(
            lambda: self.stub.Predict(many, timeout=60)
        )
        self.assertIn("at most 65536", details)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = NAME
        request.model_spec.signature_name = "image_tensor"
        images = request.inputs["images"]
        images.dtype = tf.uint8.as_datatype_enum
        for size in (100_000, 1000, 1000, 3):
            images.tensor_shape.dim.add(size=size)
        images.int_val.append(7)
        self.assert_refused(lambda: self.stub.Predict(request, timeout=60))
        self.assert_healthy()

    def test_malformed_tensors_and_protos_are_invalid_argument(self):
        def image_request(shape, content):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = NAME
            request.model_spec.signature_name = "image_tensor"
            images = request.inputs["images"]
            images.dtype = tf.uint8.as_datatype_enum
            for size in shape:
                images.tensor_shape.dim.add(size=size)
            images.tensor_content = content
            return request

        bad = [
            image_request([1, 8, 8, 3], b"\0" * 100),  # Short content.
            image_request([1, 8, 8, 3], b"\0" * 1000),  # Long content.
            image_request([1, -8, 8, 3], b""),
            _string_request([b"x"], shape=[-1]),
        ]
        unknown_rank = _string_request(self.good[:1])
        unknown_rank.inputs["image_bytes"].tensor_shape.unknown_rank = True
        bad.append(unknown_rank)
        wrong_field = _string_request([])
        wrong_field.inputs["image_bytes"].tensor_content = b"abc"
        bad.append(wrong_field)
        bad_dtype = _string_request(self.good[:1])
        bad_dtype.inputs["image_bytes"].dtype = 999
        bad.append(bad_dtype)
        for request in bad:
            self.assert_refused(
                lambda r=request: self.stub.Predict(r, timeout=60)
            )
        raw = self.channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict"
        )
        valid = _string_request(self.good[:1]).SerializeToString()
        bad_utf8 = b"\x0a\x04\x0a\x02\xff\xfe"  # model_spec.name.
        for data in (b"\xff\xff\xff\xff", valid[: len(valid) // 2], bad_utf8):
            self.assert_refused(lambda d=data: raw(d, timeout=60))
        self.assert_healthy()

    def test_decompression_bombs_and_big_batches_are_refused(self):
        bomb = testutil.png_bomb()
        self.assertLess(len(bomb), 100_000)
        for data in (bomb, testutil.jpeg_bomb(), testutil.gif_bomb()):
            request = _string_request([self.good[0], data])
            details = self.assert_refused(
                lambda r=request: self.stub.Predict(r, timeout=120)
            )
            self.assertIn(f"more than {MAX_PIXELS} pixels", details)
        request = _string_request(self.good[:1] * (MAX_BATCH + 1))
        details = self.assert_refused(
            lambda: self.stub.Predict(request, timeout=120)
        )
        self.assertIn(f"more than {MAX_BATCH} inputs", details)
        classify = serving_model.example_bytes([bomb])
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = NAME
        request.model_spec.signature_name = "classify"
        for serialized in classify:
            request.input.example_list.examples.add().ParseFromString(
                serialized
            )
        self.assert_refused(lambda: self.stub.Classify(request, timeout=120))
        empty = classification_pb2.ClassificationRequest()
        empty.model_spec.name = NAME
        empty.model_spec.signature_name = "classify"
        for _ in range(1_000_000):
            empty.input.example_list.examples.add()
        details = self.assert_refused(
            lambda: self.stub.Classify(empty, timeout=120)
        )
        self.assertIn("at most 65536", details)
        self.assert_healthy()

    def test_oversized_messages_are_resource_exhausted(self):
        blob = np.random.default_rng(0).bytes(MESSAGE_BYTES + 1024)
        request = _string_request([blob])
        self.assert_refused(
            lambda: self.stub.Predict(request, timeout=120), (EXHAUSTED,)
        )
        self.assert_healthy()

    def test_many_concurrent_calls_are_bounded(self):
        # Slow enough to overlap: a full batch of 1200 x 1200 images.
        rng = np.random.default_rng(1)
        y, x = np.mgrid[0:1200, 0:1200] / 1200.0
        image = 128 + 100 * np.sin(8 * x + 5 * y)[..., None]
        image = image + rng.normal(0, 4, (1200, 1200, 3))
        big = tf.io.encode_jpeg(
            np.clip(image, 0, 255).astype(np.uint8), quality=80
        ).numpy()
        request = _string_request([big] * MAX_BATCH)
        self.assertLess(request.ByteSize(), MESSAGE_BYTES)
        calls = 8 * ADMITTED
        futures = [
            self.stub.Predict.future(request, timeout=300) for _ in range(calls)
        ]
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        self.assertLessEqual(set(codes), {grpc.StatusCode.OK, EXHAUSTED})
        self.assertIn(EXHAUSTED, codes)
        self.assertIn(grpc.StatusCode.OK, codes)
        self.assert_healthy()


if __name__ == "__main__":
    tf.test.main()
