"""Decode, validate and convert one image to an RGB JPEG.

Every image the pipeline writes goes through `convert`, which either
returns the RGB JPEG to store or raises `ImageRejected` with a reason for
the dead-letter output. The rules follow TFDS's ImageNet repairs (CMYK and
PNG files re-encoded as RGB JPEG) and extend them to every odd input:

- Baseline RGB JPEGs that need no resize are stored byte for byte (after a
  full decode to prove they are sound): no generation loss, no encode cost.
- CMYK, grayscale, palette, 16-bit and other modes become RGB; images with
  transparency are composited on white (dropping alpha would expose
  whatever colour the transparent pixels happen to hold).
- Optional resize so that the shorter side is at most S (bicubic), with
  libjpeg's DCT scaling ("draft") to decode large JPEGs at 1/2..1/8 size
  first, which is what makes 21K/JFT-scale resizing affordable.
- Animated GIF/WebP/PNG: the first frame.
- Size limits before decoding: file bytes and pixel count (decompression
  bombs are rejected from the header alone).

EXIF orientation is not applied, as TFDS and `tf.io.decode_jpeg` do not
apply it either: the trainer sees the pixels the file stores.
Everything here is deterministic: the same bytes give the same output.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Reasons an image is rejected (the `reason` of a dead-letter record).
EMPTY_FILE = "empty_file"
FILE_TOO_LARGE = "file_too_large"
NOT_AN_IMAGE = "not_an_image"
DECODE_ERROR = "decode_error"
TRUNCATED = "truncated"
TOO_MANY_PIXELS = "too_many_pixels"
BAD_DIMENSIONS = "bad_dimensions"
UNSUPPORTED_MODE = "unsupported_mode"
FORMAT_NOT_ALLOWED = "format_not_allowed"

# Conversions applied, counted in the metadata.
PASSTHROUGH = "passthrough"
REENCODED = "reencoded"
FROM_CMYK = "from_cmyk"
FROM_GRAYSCALE = "from_grayscale"
FROM_ALPHA = "from_alpha"
FROM_PALETTE = "from_palette"
FROM_HIGH_BIT_DEPTH = "from_high_bit_depth"
FROM_OTHER_FORMAT = "from_other_format"
RESIZED = "resized"

# File signatures: a file that starts like an image but does not open is
# corrupt, anything else is not an image at all.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"RIFF",  # WebP
    b"II*\x00",  # TIFF
    b"MM\x00*",
)
# The formats Pillow may open. Everything else is refused before a
# decoder runs: Pillow's EPS plugin, for one, hands a PostScript file to
# Ghostscript where that is installed, whatever the file is named. (JPEG
# opens the multi-picture MPO files many cameras write as well.)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
# Signatures of formats that are images (or programs) but not allowed.
_REFUSED_MAGIC = (
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"<?xml", "XML/SVG"),
    (b"<svg", "SVG"),
    (b"P1", "PBM"),
    (b"P4", "PBM"),
    (b"P5", "PGM"),
    (b"P6", "PPM"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"qoif", "QOI"),
)
# Rows converted per step of 16-bit images, bounding the temporaries.
_ROWS_PER_STEP = 512
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_GRAY_MODES = frozenset({"L", "1"})
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_WHITE = (255, 255, 255)


class ImageRejected(Exception):
    """The image cannot be written; `reason` is one of the reasons above."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How images are checked and converted.

    Attributes:
      resize_shorter_side: 0 = keep the size; else the shorter side of
        larger images is resized down to this.
      jpeg_quality: quality of re-encoded JPEGs.
      max_pixels: width * height above this is rejected before decoding.
      max_file_bytes: larger inputs are rejected before decoding.
    """

    resize_shorter_side: int = 0
    jpeg_quality: int = 95
    max_pixels: int = 89_478_485
    max_file_bytes: int = 64 << 20


@dataclasses.dataclass(frozen=True)
class ConvertedImage:
    """An image ready to be written.

    Attributes:
      jpeg: RGB JPEG bytes.
      height: pixel rows of `jpeg`.
      width: pixel columns of `jpeg`.
      conversions: what was done, e.g. ("from_cmyk", "reencoded").
    """

    jpeg: bytes
    height: int
    width: int
    conversions: tuple[str, ...]


def _target_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """The size whose shorter side is `shorter`, aspect ratio kept."""
    if width <= height:
        return shorter, max(1, round(height * shorter / width))
    return max(1, round(width * shorter / height)), shorter


def _open(data: bytes, options: ImageOptions) -> Image.Image:
    """Opens (reads the header of) an image and checks its size."""
    if not data:
        raise ImageRejected(EMPTY_FILE, "zero bytes")
    if len(data) > options.max_file_bytes:
        raise ImageRejected(
            FILE_TOO_LARGE,
            f"{len(data)} bytes > max_file_bytes={options.max_file_bytes}",
        )
    try:
        # Pillow warns (and, at twice its limit, raises) about
        # decompression bombs; the explicit max_pixels check below is the
        # rule here, so the warning is silenced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageRejected(TOO_MANY_PIXELS, str(e)) from e
    except UnidentifiedImageError as e:
        for magic, name in _REFUSED_MAGIC:
            if data.startswith(magic):
                raise ImageRejected(
                    FORMAT_NOT_ALLOWED,
                    f"a {name} file; allowed: {', '.join(ALLOWED_FORMATS)}",
                ) from e
        if data.startswith(_MAGIC):
            raise ImageRejected(DECODE_ERROR, f"corrupt header: {e}") from e
        raise ImageRejected(
            NOT_AN_IMAGE, f"unknown format, starts with {data[:8]!r}"
        ) from e
    except Exception as e:  # Pillow raises many types on bad headers.
        raise ImageRejected(DECODE_ERROR, f"{type(e).__name__}: {e}") from e
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(BAD_DIMENSIONS, f"{width}x{height}")
    if width * height > options.max_pixels:
        raise ImageRejected(
            TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height} pixels > max_pixels="
            f"{options.max_pixels}",
        )
    return image


def _load(image: Image.Image) -> None:
    """Decodes the pixels, mapping decoder errors to reasons."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except OSError as e:
        reason = TRUNCATED if "truncated" in str(e).lower() else DECODE_ERROR
        raise ImageRejected(reason, str(e)) from e
    except Exception as e:  # SyntaxError, ValueError, struct.error, ...
        raise ImageRejected(DECODE_ERROR, f"{type(e).__name__}: {e}") from e


def _to_rgb(image: Image.Image, conversions: list[str]) -> Image.Image:
    """Any Pillow mode to RGB, recording what was converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        conversions.append(FROM_PALETTE)
        if "transparency" not in image.info:
            return image.convert("RGB")
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        conversions.append(FROM_ALPHA)
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "CMYK":
        # Pillow reads Adobe's inverted CMYK JPEGs correctly, so the
        # plain conversion gives the right colours.
        conversions.append(FROM_CMYK)
        return image.convert("RGB")
    if mode in _GRAY_MODES:
        conversions.append(FROM_GRAYSCALE)
        return image.convert("RGB")
    if mode in _HIGH_BIT_MODES:
        conversions.append(FROM_HIGH_BIT_DEPTH)
        return Image.fromarray(_high_bit_to_8(image), "L").convert("RGB")
    try:
        conversions.append(f"from_{mode.lower()}")
        return image.convert("RGB")
    except ValueError as e:
        raise ImageRejected(UNSUPPORTED_MODE, f"mode {mode}: {e}") from e


def _high_bit_to_8(image: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit) gray to uint8, in integers, a band at a time.

    16-bit integer data spans 0..65535 and maps to round(v * 255 / 65535)
    (exact in integers, as v / 257 never falls on a half); float data is
    taken as 0..255. Working on bands of rows keeps the temporaries to a
    few MB even for a 90-megapixel image.
    """
    width, height = image.size
    out = np.empty((height, width), np.uint8)
    for top in range(0, height, _ROWS_PER_STEP):
        band = np.asarray(
            image.crop((0, top, width, min(height, top + _ROWS_PER_STEP)))
        )
        if image.mode == "F":
            out[top : top + band.shape[0]] = np.clip(np.rint(band), 0, 255)
            continue
        wide = np.clip(band, 0, 65535).astype(np.uint32)
        wide *= 255
        wide += 32767
        wide //= 65535
        out[top : top + band.shape[0]] = wide
    return out


def convert(data: bytes, options: ImageOptions) -> ConvertedImage:
    """Checks one encoded image and returns the RGB JPEG to store.

    Args:
      data: the encoded image (JPEG, PNG, GIF, BMP, WebP, TIFF, ...).
      options: limits, resize and quality.

    Returns:
      The JPEG with its size and the conversions applied.

    Raises:
      ImageRejected: empty, too large, not an image or not an allowed
        format, corrupt, truncated, or of a mode that has no RGB
        conversion.
    """
    try:
        return _convert(data, options)
    except ImageRejected:
        raise
    except MemoryError:
        raise  # Not the image's fault: let the runner retry elsewhere.
    except Exception as e:  # A decoder or converter failing any other way.
        raise ImageRejected(DECODE_ERROR, f"{type(e).__name__}: {e}") from e


def _convert(data: bytes, options: ImageOptions) -> ConvertedImage:
    image = _open(data, options)
    width, height = image.size
    shorter = options.resize_shorter_side
    needs_resize = shorter > 0 and min(width, height) > shorter
    target = _target_size(width, height, shorter) if needs_resize else None
    conversions: list[str] = []
    if image.format == "JPEG" and target is not None:
        # DCT-domain downscale by 1/2, 1/4 or 1/8 while decoding, never
        # below the target size; the resize below finishes the job.
        image.draft(None, target)
    _load(image)
    if image.format == "JPEG" and image.mode == "RGB" and target is None:
        return ConvertedImage(data, height, width, (PASSTHROUGH,))
    if image.format != "JPEG":
        conversions.append(FROM_OTHER_FORMAT)
    rgb = _to_rgb(image, conversions)
    if target is not None and rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
        conversions.append(RESIZED)
    elif target is not None:
        conversions.append(RESIZED)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=options.jpeg_quality)
    conversions.append(REENCODED)
    width, height = rgb.size
    return ConvertedImage(out.getvalue(), height, width, tuple(conversions))
