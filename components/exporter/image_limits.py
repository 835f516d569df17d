"""Size limits the exported signatures enforce before decoding an image.

An encoded image states its dimensions in its header, and decoders
allocate the output from those before reading any pixel data: a 60 KB PNG
can declare 20000 x 20000 pixels (1.2 GB decoded), and TF's decoders only
refuse beyond about 2^29 bytes per image. So the serving graph reads each
image's header with string ops (`tf.strings.substr`, `tf.io.decode_raw`,
`tf.io.extract_jpeg_shape`, which parses the JPEG header only) and asserts
`height * width <= max_pixels` before `tf.io.decode_image` runs. Formats
are recognised by the same signatures `decode_image` sniffs:

  JPEG  FF D8 FF       the SOFn frame header (libjpeg's header parse)
  PNG   89 'PNG' ...   IHDR width and height
  GIF   'GIF8'         every frame's descriptor: giflib decodes all frames
                       before the first is returned, so the largest frame
                       and the sum over frames are both bounded
  BMP   'BM'           BITMAPINFOHEADER width and |height|
  WebP  'RIFF'..'WEBP' VP8 / VP8L / VP8X canvas size; animated WebP is
                       refused (its frames are not scanned)

Anything else is refused. Failed checks raise `InvalidArgumentError`,
which TF Serving returns as INVALID_ARGUMENT; the batch size is checked
the same way before any image of the batch is touched.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_BATCH_SIZE = 256
# GIF blocks and data sub-blocks scanned per image; a GIF needing more is
# refused (at 255 bytes per sub-block this admits GIFs up to ~16 MB).
MAX_GIF_BLOCKS = 1 << 16


def _bytes_at(data: tf.Tensor, length: tf.Tensor, pos, n: int) -> tf.Tensor:
    """Bytes [pos, pos + n) of a scalar string as int64 [n]; 0 past the end."""
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, length)
    piece = tf.strings.substr(data, pos, n)
    piece = tf.strings.substr(
        tf.strings.join([piece, tf.constant(b"\0" * n)]), 0, n
    )
    raw = tf.reshape(tf.io.decode_raw(piece, tf.uint8), [n])
    return tf.cast(raw, tf.int64)


def _uint(raw: tf.Tensor, big_endian: bool) -> tf.Tensor:
    """An unsigned integer from int64 bytes."""
    n = raw.shape[0]
    shifts = [8 * (n - 1 - i) if big_endian else 8 * i for i in range(n)]
    return tf.reduce_sum(
        tf.bitwise.left_shift(raw, tf.constant(shifts, tf.int64))
    )


def _starts_with(data: tf.Tensor, prefix: bytes) -> tf.Tensor:
    return tf.equal(tf.strings.substr(data, 0, len(prefix)), prefix)


def _png(data, length):
    raw = _bytes_at(data, length, 16, 8)
    return _uint(raw[4:], True), _uint(raw[:4], True)


def _bmp(data, length):
    raw = _bytes_at(data, length, 18, 8)
    width = _uint(raw[:4], False)
    height = _uint(raw[4:], False)
    # Signed 32-bit fields; a negative height means a top-down bitmap.
    width = tf.where(width >= 2**31, 2**32 - width, width)
    height = tf.where(height >= 2**31, 2**32 - height, height)
    return height, width


def _webp(data, length):
    raw = _bytes_at(data, length, 12, 18)
    chunk = tf.strings.substr(data, 12, 4)
    # VP8 (lossy): 14-bit sizes after the 3-byte tag and start code.
    lossy_w = tf.bitwise.bitwise_and(_uint(raw[14:16], False), 0x3FFF)
    lossy_h = tf.bitwise.bitwise_and(_uint(raw[16:18], False), 0x3FFF)
    # VP8L (lossless): 14-bit width - 1 and height - 1 after 0x2F.
    bits = _uint(raw[9:13], False)
    lossless_w = tf.bitwise.bitwise_and(bits, 0x3FFF) + 1
    lossless_h = (
        tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1
    )
    # VP8X (extended): 24-bit canvas width - 1 and height - 1.
    canvas_w = _uint(raw[12:15], False) + 1
    canvas_h = _uint(raw[15:18], False) + 1
    height = tf.where(
        tf.equal(chunk, b"VP8 "),
        lossy_h,
        tf.where(tf.equal(chunk, b"VP8L"), lossless_h, canvas_h),
    )
    width = tf.where(
        tf.equal(chunk, b"VP8 "),
        lossy_w,
        tf.where(tf.equal(chunk, b"VP8L"), lossless_w, canvas_w),
    )
    # An animated VP8X (flag 0x02) is refused: its frames are not
    # scanned, and the decoder may decode them all.
    animated = tf.logical_and(
        tf.equal(chunk, b"VP8X"), tf.bitwise.bitwise_and(raw[8], 0x02) > 0
    )
    known = tf.logical_and(
        tf.reduce_any(
            tf.equal(chunk, tf.constant([b"VP8 ", b"VP8L", b"VP8X"]))
        ),
        tf.logical_not(animated),
    )
    return height, width, known


def _gif(data, length):
    """(largest frame height, width, total frame pixels, scan finished)."""
    screen = _bytes_at(data, length, 10, 1)[0]
    table = tf.where(
        tf.bitwise.bitwise_and(screen, 0x80) > 0,
        3
        * tf.bitwise.left_shift(
            tf.constant(2, tf.int64), tf.bitwise.bitwise_and(screen, 7)
        ),
        0,
    )
    start = 13 + table

    # State: position, in sub-blocks?, max h, max w, total, finished.
    def body(pos, in_data, max_h, max_w, total, done):
        raw = _bytes_at(data, length, pos, 10)
        kind = raw[0]
        # Inside a block's data: skip one length-prefixed sub-block; a
        # zero length ends the block.
        sub_pos = pos + 1 + kind
        sub_in = kind > 0
        # At a block start: extension (21), image (2C) or trailer (3B).
        is_image = tf.equal(kind, 0x2C)
        frame_w = _uint(raw[5:7], False)
        frame_h = _uint(raw[7:9], False)
        flags = raw[9]
        local = tf.where(
            tf.bitwise.bitwise_and(flags, 0x80) > 0,
            3
            * tf.bitwise.left_shift(
                tf.constant(2, tf.int64), tf.bitwise.bitwise_and(flags, 7)
            ),
            0,
        )
        block_pos = tf.where(is_image, pos + 11 + local, pos + 2)
        block_end = tf.logical_not(
            tf.logical_or(is_image, tf.equal(kind, 0x21))
        )
        counted = tf.logical_and(tf.logical_not(in_data), is_image)
        new_pos = tf.where(in_data, sub_pos, block_pos)
        finished = tf.logical_or(
            tf.logical_and(tf.logical_not(in_data), block_end),
            new_pos >= length,
        )
        return (
            new_pos,
            tf.where(in_data, sub_in, tf.logical_not(block_end)),
            tf.where(counted, tf.maximum(max_h, frame_h), max_h),
            tf.where(counted, tf.maximum(max_w, frame_w), max_w),
            tf.where(counted, total + frame_h * frame_w, total),
            finished,
        )

    zero = tf.constant(0, tf.int64)
    _, _, max_h, max_w, total, done = tf.while_loop(
        lambda *state: tf.logical_not(state[-1]),
        body,
        (start, tf.constant(False), zero, zero, zero, start >= length),
        maximum_iterations=MAX_GIF_BLOCKS,
    )
    return max_h, max_w, total, done


def image_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """Pixels a decoder would allocate for one encoded image, from its header.

    Args:
      image_bytes: a scalar string tensor.

    Returns:
      An int64 scalar: height * width (for a GIF, the larger of the canvas
      and the sum over frames); -1 for an unrecognised format, or a GIF
      without frames or too long to scan.
    """
    data = tf.convert_to_tensor(image_bytes, tf.string)
    length = tf.cast(tf.strings.length(data), tf.int64)

    def product(hw):
        return tf.cast(hw[0], tf.int64) * tf.cast(hw[1], tf.int64)

    def jpeg():
        return product(tf.io.extract_jpeg_shape(data, output_type=tf.int64))

    def gif():
        max_h, max_w, total, done = _gif(data, length)
        # No frame at all: nothing to decode, refused as malformed.
        scanned = tf.logical_and(done, total > 0)
        return tf.where(scanned, tf.maximum(max_h * max_w, total), -1)

    def png():
        return product(_png(data, length))

    def bmp():
        return product(_bmp(data, length))

    def webp():
        height, width, known = _webp(data, length)
        is_webp = tf.equal(tf.strings.substr(data, 8, 4), b"WEBP")
        known = tf.logical_and(is_webp, known)
        return tf.where(known, product((height, width)), -1)

    return tf.case(
        [
            (_starts_with(data, b"\xff\xd8\xff"), jpeg),
            (_starts_with(data, b"\x89PNG\r\n\x1a\n"), png),
            (_starts_with(data, b"GIF8"), gif),
            (_starts_with(data, b"BM"), bmp),
            (
                tf.logical_and(_starts_with(data, b"RIFF"), length >= 30),
                webp,
            ),
        ],
        default=lambda: tf.constant(-1, tf.int64),
        exclusive=False,
    )


def check_image(image_bytes: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An assertion that one encoded image is of a known format and small.

    Args:
      image_bytes: a scalar string tensor.
      max_pixels: the largest height * width accepted.

    Returns:
      The assert op; run the decode under a control dependency on it.
    """
    pixels = image_pixels(image_bytes)
    return tf.debugging.Assert(
        tf.logical_and(pixels >= 0, pixels <= max_pixels),
        [
            f"Image refused before decoding: not a JPEG, PNG, GIF, BMP or "
            f"WebP, or more than {max_pixels} pixels (at most "
            f"{MAX_GIF_BLOCKS} GIF blocks). Header pixels (-1: unknown):",
            pixels,
        ],
        name="check_image_size",
    )


def check_image_tensor(images: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An assertion that a decoded [N, H, W, C] batch has H * W in bounds."""
    shape = tf.shape(images, out_type=tf.int64)
    pixels = shape[1] * shape[2]
    return tf.debugging.Assert(
        pixels <= max_pixels,
        [f"Images refused: more than {max_pixels} pixels; got", pixels],
        name="check_image_tensor_size",
    )


def check_batch(batch: tf.Tensor, max_batch_size: int) -> tf.Operation:
    """An assertion that a batch's first dimension is at most the limit."""
    size = tf.shape(batch, out_type=tf.int64)[0]
    return tf.debugging.Assert(
        size <= max_batch_size,
        [f"Batch refused: more than {max_batch_size} inputs; got", size],
        name="check_batch_size",
    )
