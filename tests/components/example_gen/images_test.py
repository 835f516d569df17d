"""Tests for image checks/conversion and the record format."""

import hashlib
import io

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized
from PIL import Image

from artifacts import examples as examples_lib
from components.example_gen import images, records
from tests.components.example_gen import fixtures

OPTIONS = images.ImageOptions(max_pixels=1_000_000)


def _decode(jpeg: bytes) -> np.ndarray:
    return tf.io.decode_jpeg(jpeg, channels=0).numpy()


class ConvertTest(parameterized.TestCase):
    def test_baseline_rgb_jpeg_is_stored_byte_for_byte(self):
        data = fixtures.good_jpeg(1)
        out = images.convert(data, OPTIONS)
        self.assertEqual(out.jpeg, data)
        self.assertEqual(out.conversions, (images.PASSTHROUGH,))
        self.assertEqual((out.height, out.width), (48, 64))

    @parameterized.named_parameters(
        ("cmyk", fixtures.cmyk_jpeg(2), images.FROM_CMYK, (40, 56)),
        (
            "grayscale",
            fixtures.grayscale_jpeg(3),
            images.FROM_GRAYSCALE,
            (40, 40),
        ),
        ("png_alpha", fixtures.png_with_alpha(4), images.FROM_ALPHA, (32, 48)),
    )
    def test_odd_images_become_rgb_jpeg(self, data, conversion, size):
        out = images.convert(data, OPTIONS)
        self.assertIn(conversion, out.conversions)
        self.assertIn(images.REENCODED, out.conversions)
        pixels = _decode(out.jpeg)
        # Three channels as stored (not just as decoded), right size.
        self.assertEqual(pixels.shape, (*size, 3))
        self.assertEqual(Image.open(io.BytesIO(out.jpeg)).mode, "RGB")
        self.assertEqual((out.height, out.width), size)

    def test_cmyk_colours_survive(self):
        rgb = fixtures.photo_like(40, 56, 5)
        cmyk = fixtures.encode(rgb, mode="CMYK", quality=95)
        out = _decode(images.convert(cmyk, OPTIONS).jpeg).astype(np.float32)
        # JPEG twice over: close, not equal; inverted CMYK would be ~128 off.
        self.assertLess(np.abs(out - rgb).mean(), 12.0)

    def test_transparent_pixels_become_white(self):
        out = _decode(images.convert(fixtures.png_with_alpha(6), OPTIONS).jpeg)
        self.assertGreater(out[:, :20].mean(), 245.0)  # The transparent half.
        self.assertLess(out[:, 28:].mean(), 245.0)

    def test_palette_and_16_bit_images(self):
        palette = fixtures.encode(
            fixtures.photo_like(20, 30, 7), "PNG", mode="P"
        )
        out = images.convert(palette, OPTIONS)
        self.assertIn(images.FROM_PALETTE, out.conversions)
        gray16 = (np.arange(20 * 30, dtype=np.uint16) * 100).reshape(20, 30)
        buf = io.BytesIO()
        Image.fromarray(gray16).save(buf, "PNG")
        out = images.convert(buf.getvalue(), OPTIONS)
        self.assertIn(images.FROM_HIGH_BIT_DEPTH, out.conversions)
        pixels = _decode(out.jpeg)
        # 16-bit range scaled to 8 bits, not clipped to white.
        self.assertLess(pixels[0, :5].mean(), 10)
        self.assertGreater(pixels[-1, -5:].mean(), 200)

    @parameterized.named_parameters(
        ("corrupt", fixtures.corrupt_jpeg(1), images.DECODE_ERROR),
        ("truncated", fixtures.truncated_jpeg(2), images.TRUNCATED),
        ("zero_bytes", b"", images.EMPTY_FILE),
        ("not_an_image", fixtures.not_an_image(), images.NOT_AN_IMAGE),
        ("bomb", fixtures.huge_png_header(), images.TOO_MANY_PIXELS),
    )
    def test_bad_inputs_are_rejected_with_reason(self, data, reason):
        with self.assertRaises(images.ImageRejected) as ctx:
            images.convert(data, OPTIONS)
        self.assertEqual(ctx.exception.reason, reason)
        self.assertTrue(ctx.exception.message)

    def test_limits(self):
        data = fixtures.good_jpeg(3, 100, 120)  # 12,000 pixels.
        small = images.ImageOptions(max_pixels=10_000)
        with self.assertRaises(images.ImageRejected) as ctx:
            images.convert(data, small)
        self.assertEqual(ctx.exception.reason, images.TOO_MANY_PIXELS)
        with self.assertRaises(images.ImageRejected) as ctx:
            images.convert(data, images.ImageOptions(max_file_bytes=100))
        self.assertEqual(ctx.exception.reason, images.FILE_TOO_LARGE)

    @parameterized.parameters((120, 200, 60), (200, 120, 60), (90, 90, 45))
    def test_resize_shorter_side(self, height, width, shorter):
        data = fixtures.good_jpeg(8, height, width)
        out = images.convert(
            data, images.ImageOptions(resize_shorter_side=shorter)
        )
        self.assertEqual(min(out.height, out.width), shorter)
        self.assertAlmostEqual(
            out.width / out.height, width / height, delta=0.02
        )
        self.assertEqual(_decode(out.jpeg).shape, (out.height, out.width, 3))
        self.assertIn(images.RESIZED, out.conversions)

    def test_small_images_are_not_upscaled(self):
        data = fixtures.good_jpeg(9, 40, 50)
        out = images.convert(data, images.ImageOptions(resize_shorter_side=64))
        self.assertEqual(out.jpeg, data)

    def test_deterministic(self):
        for data in (fixtures.cmyk_jpeg(10), fixtures.good_jpeg(11, 200, 150)):
            opts = images.ImageOptions(resize_shorter_side=64)
            self.assertEqual(
                images.convert(data, opts).jpeg, images.convert(data, opts).jpeg
            )


class RecordsTest(absltest.TestCase):
    def test_example_parses_with_the_feature_spec(self):
        jpeg = fixtures.good_jpeg(1)
        data = records.make_example(
            jpeg, 48, 64, [3, 7], [0.5, 0.25], "a/b.jpg"
        )
        parsed = tf.io.parse_single_example(
            data, examples_lib.feature_spec(multi_label=True, with_scores=True)
        )
        self.assertEqual(parsed[records.IMAGE_ENCODED].numpy(), jpeg)
        self.assertEqual(parsed[records.IMAGE_FORMAT].numpy(), b"jpeg")
        self.assertEqual(parsed[records.SOURCE_ID].numpy(), b"a/b.jpg")
        np.testing.assert_array_equal(
            tf.sparse.to_dense(parsed[records.LABEL]), [3, 7]
        )
        np.testing.assert_allclose(
            tf.sparse.to_dense(parsed[records.SCORE]), [0.5, 0.25]
        )

    def test_items_sort_labels_with_their_scores(self):
        item = records.make_item("train", "x", "x", [9, 2, 5], [0.9, 0.2, 0.5])
        self.assertEqual(item["labels"], (2, 5, 9))
        self.assertEqual(item["scores"], (0.2, 0.5, 0.9))

    def test_stable_hash_is_stable(self):
        # The documented definition (first 8 bytes of sha256 of the parts
        # joined by \x1f): shard placement must not drift between versions.
        want = hashlib.sha256(b"0\x1ftrain\x1fabc").digest()[:8]
        self.assertEqual(
            records.stable_hash(0, "train", "abc"), int.from_bytes(want, "big")
        )
        self.assertNotEqual(
            records.stable_hash(1, "train", "abc"),
            records.stable_hash(0, "train", "abc"),
        )


class HostileImageTest(absltest.TestCase):
    def test_sixteen_bit_is_converted_in_integers(self):
        pixels = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
        image = Image.fromarray(pixels)
        want = np.clip(np.rint(pixels * (255.0 / 65535.0)), 0, 255)
        got = images._high_bit_to_8(image)
        self.assertEqual(got.dtype, np.uint8)
        np.testing.assert_array_equal(got, want.astype(np.uint8))
        np.testing.assert_array_equal(
            images._high_bit_to_8(image.convert("I")), got
        )

    def test_formats_outside_the_allowlist_are_refused(self):
        for data in (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
            b"%PDF-1.4\n",
        ):
            with self.assertRaises(images.ImageRejected) as e:
                images.convert(data, images.ImageOptions())
            self.assertEqual(e.exception.reason, images.FORMAT_NOT_ALLOWED)
        out = io.BytesIO()
        Image.new("RGB", (4, 4)).save(out, "PPM")
        with self.assertRaises(images.ImageRejected) as e:
            images.convert(out.getvalue(), images.ImageOptions())
        self.assertEqual(e.exception.reason, images.FORMAT_NOT_ALLOWED)


if __name__ == "__main__":
    absltest.main()
