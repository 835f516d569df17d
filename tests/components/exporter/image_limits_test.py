"""The exported signatures' size checks, run in-process on crafted headers.

Each bomb is a small file whose header declares a huge image; the checks
must refuse it with InvalidArgumentError before any decoder allocates the
pixels. Ordinary images must pass and give the same outputs as the shared
preprocessing.
"""

import io
import os
import struct

import numpy as np
import tensorflow as tf
from PIL import Image

from components import preprocessing
from components.exporter import image_limits, serving_model
from tests.serving import testutil

LABELS = ["a", "b", "c"]


def encoded(fmt: str, height: int = 37, width: int = 53, **kw) -> bytes:
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


def gif_frames(sizes) -> bytes:
    """An animated GIF with frames of the given (width, height)."""
    frames = [
        Image.fromarray(np.full((h, w, 3), i * 40, np.uint8))
        for i, (w, h) in enumerate(sizes)
    ]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


_image_pixels = tf.function(
    image_limits.image_pixels,
    input_signature=[tf.TensorSpec([], tf.string)],
)


class ImagePixelsTest(tf.test.TestCase):
    def pixels(self, data: bytes) -> int:
        return int(_image_pixels(data).numpy())

    def test_headers_of_every_format(self):
        cases = {
            "jpeg": tf.io.encode_jpeg(np.zeros([37, 53, 3], np.uint8)).numpy(),
            "png": encoded("PNG"),
            "gif": encoded("GIF"),
            "bmp": encoded("BMP"),
            "webp lossy": encoded("WEBP"),
            "webp lossless": encoded("WEBP", lossless=True),
        }
        for name, data in cases.items():
            with self.subTest(name):
                self.assertEqual(self.pixels(data), 37 * 53)
                decoded = tf.io.decode_image(data, expand_animations=False)
                self.assertEqual(decoded.shape[:2], (37, 53))

    def test_gif_counts_every_frame(self):
        # Frames differ everywhere, so each is stored full size.
        data = gif_frames([(40, 30)] * 3)
        self.assertEqual(self.pixels(data), 3 * 40 * 30)
        self.assertEqual(self.pixels(testutil.gif_bomb()), 65535 * 65535)

    def test_bombs_and_unknown_formats(self):
        self.assertEqual(self.pixels(testutil.png_bomb()), 20000 * 20000)
        self.assertEqual(self.pixels(testutil.jpeg_bomb()), 60000 * 60000)
        bmp = bytearray(encoded("BMP"))
        bmp[18:26] = struct.pack("<ii", 30000, -30000)  # Top-down.
        self.assertEqual(self.pixels(bytes(bmp)), 30000 * 30000)
        frames = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
        buf = io.BytesIO()
        frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
        self.assertEqual(self.pixels(buf.getvalue()), -1)  # Animated.
        unknown_chunk = b"RIFF\0\0\0\0WEBPVP8Z" + b"\0" * 20
        for junk in (b"", b"hello", unknown_chunk, b"GIF8"):
            self.assertEqual(self.pixels(junk), -1, junk)


class ServingLimitsTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model, spec = testutil.build_model(len(LABELS), seed=2)
        labels = os.path.join(
            tf.compat.v1.test.get_temp_dir(), "limits_labels.txt"
        )
        with open(labels, "w") as f:
            f.write("\n".join(LABELS) + "\n")
        cls.module = serving_model.ServingModule(
            cls.model,
            spec,
            labels,
            top_k=2,
            max_image_pixels=1_000_000,
            max_batch_size=4,
        )

    def refused(self, call, *args):
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, "refused"
        ) as caught:
            call(*args)
        return str(caught.exception)

    def test_bombs_are_refused_before_decoding(self):
        bomb = testutil.png_bomb()
        self.assertLess(len(bomb), 100_000)
        good = testutil.class_image(0, 0)
        for data in (
            bomb,
            testutil.jpeg_bomb(),
            testutil.gif_bomb(),
            encoded("PNG", 1001, 1000),
        ):
            message = self.refused(
                self.module.serve_image_bytes, tf.constant([good, data])
            )
            self.assertIn("1000000 pixels", message)
        examples = serving_model.example_bytes([bomb])
        self.refused(self.module.classify, tf.constant(examples))
        self.refused(
            self.module.serve_images, tf.zeros([1, 1001, 1000, 3], tf.uint8)
        )
        self.refused(self.module.serve_image_bytes, tf.constant([b"junk"]))

    def test_batches_over_the_limit_are_refused(self):
        good = testutil.class_image(1, 0)
        message = self.refused(
            self.module.serve_image_bytes, tf.constant([good] * 5)
        )
        self.assertIn("more than 4 inputs", message)
        self.refused(self.module.serve_images, tf.zeros([5, 8, 8, 3], tf.uint8))
        self.refused(
            self.module.classify,
            tf.constant(serving_model.example_bytes([good] * 5)),
        )

    def test_images_at_the_limits_are_served_unchanged(self):
        images = [
            testutil.class_image(2, 1),
            encoded("PNG", 1000, 1000),
            encoded("GIF", 40, 60),
            encoded("BMP", 50, 30),
        ]
        out = self.module.serve_image_bytes(tf.constant(images))
        batch = tf.stack(
            [preprocessing.preprocess_for_eval(b, 32) for b in images]
        )
        want = tf.nn.softmax(self.model(batch, training=False))
        self.assertAllClose(out["probabilities"], want, atol=1e-5)


if __name__ == "__main__":
    tf.test.main()
