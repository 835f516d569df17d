"""Tiny test inputs made on the fly: images good and bad, folders, tars.

Photo-like images are smooth colour fields with texture and shapes, so
JPEG sizes and decode costs resemble real photos at small sizes. Every
maker is deterministic in its `seed`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import struct
import tarfile
import zlib
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw

GOOD_PER_CLASS = 5


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB [height, width, 3] image with photo-like statistics."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
    base = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32)
    pixels += rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1 = x0 + rng.integers(4, max(5, width // 2))
        y1 = y0 + rng.integers(4, max(5, height // 2))
        draw.ellipse(
            (x0, y0, x1, y1),
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    return np.asarray(image)


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw):
    """Encodes an array (optionally converted to `mode` first)."""
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def good_jpeg(seed: int, height: int = 48, width: int = 64) -> bytes:
    """A baseline RGB JPEG (stored as is unless resized)."""
    return encode(photo_like(height, width, seed), quality=90)


def cmyk_jpeg(seed: int) -> bytes:
    """A CMYK JPEG, as ImageNet has a few of."""
    return encode(photo_like(40, 56, seed), mode="CMYK", quality=90)


def grayscale_jpeg(seed: int) -> bytes:
    """A single-channel JPEG."""
    return encode(photo_like(40, 40, seed), mode="L", quality=90)


def png_with_alpha(seed: int) -> bytes:
    """An RGBA PNG whose left half is fully transparent."""
    rgba = np.dstack(
        [photo_like(32, 48, seed), np.full((32, 48), 255, np.uint8)]
    )
    rgba[:, :24, 3] = 0
    return encode(rgba, fmt="PNG")


def corrupt_jpeg(seed: int) -> bytes:
    """A JPEG signature followed by a damaged header."""
    data = bytearray(good_jpeg(seed))
    data[3:64] = bytes(61)
    return bytes(data)


def truncated_jpeg(seed: int) -> bytes:
    """The first half of a JPEG."""
    data = good_jpeg(seed)
    return data[: len(data) // 2]


def not_an_image() -> bytes:
    return b"Just some notes, not an image at all.\n"


def huge_png_header(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG that claims `width` x `height` pixels (a decompression bomb).

    Only the header is valid; the pipeline must reject it from the header
    without decoding.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_tar(
    path: str,
    members: Iterable[tuple[str, bytes]],
    symlinks: Iterable[tuple[str, str]] = (),
) -> str:
    """A tar with the given (member name, bytes), names taken verbatim."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        for name, target in symlinks:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def bad_inputs(seed: int) -> dict[str, bytes]:
    """One file of each kind the pipeline must reject, by file name."""
    return {
        "corrupt.jpg": corrupt_jpeg(seed),
        "truncated.jpg": truncated_jpeg(seed + 1),
        "zero.jpg": b"",
        "notes.txt": not_an_image(),
        "bomb.png": huge_png_header(),
    }


def convertible_inputs(seed: int) -> dict[str, bytes]:
    """Odd but valid images the pipeline must convert and write."""
    return {
        "cmyk.jpg": cmyk_jpeg(seed),
        "alpha.png": png_with_alpha(seed + 1),
        "gray.jpg": grayscale_jpeg(seed + 2),
    }


def make_image_folder(root: str) -> None:
    """`root/train/<class>/*` with every bad input, plus a flat `root/val`.

    n01: 5 good images and one of each `bad_inputs`; n02: 5 good, the
    `convertible_inputs` and `copy.JPEG`, a byte copy of `n02_1.JPEG`; n03:
    an empty folder. `root/val` holds v0..v3.JPEG, classed by
    `root/val_labels.csv`.
    """
    for c, cls in enumerate(("n01", "n02")):
        for i in range(GOOD_PER_CLASS):
            data = good_jpeg(10 * c + i, 40 + 8 * i, 56)
            write(f"{root}/train/{cls}/{cls}_{i}.JPEG", data)
    for name, data in bad_inputs(50).items():
        write(f"{root}/train/n01/{name}", data)
    for name, data in convertible_inputs(60).items():
        write(f"{root}/train/n02/{name}", data)
    shutil.copy(f"{root}/train/n02/n02_1.JPEG", f"{root}/train/n02/copy.JPEG")
    os.makedirs(f"{root}/train/n03")  # An empty class folder.
    labels = []
    for i in range(4):
        write(f"{root}/val/v{i}.JPEG", good_jpeg(70 + i))
        labels.append(f"v{i}.JPEG,n0{1 + i % 3}")
    write(f"{root}/val_labels.csv", "\n".join(labels).encode())


def write_jsonl(path: str, rows: Iterable[dict]) -> str:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    return write(path, text.encode("utf-8"))


def read_shards(uri: str, split: str) -> dict[str, list[bytes]]:
    """The serialized records of each shard file of a split, in order."""
    import tensorflow as tf  # Only the readers need TensorFlow.

    shards = {}
    for path in sorted(
        tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*"))
    ):
        compression = "GZIP" if path.endswith(".gz") else ""
        dataset = tf.data.TFRecordDataset(path, compression_type=compression)
        shards[os.path.basename(path)] = [r.numpy() for r in dataset]
    return shards


def read_rejects(uri: str) -> list[dict]:
    """The dead-letter records of an Examples artifact, from every shard."""
    paths = sorted(glob.glob(os.path.join(uri, "rejects", "rejects-*.jsonl")))
    if not paths:
        raise FileNotFoundError(f"{uri}/rejects holds no reject file.")
    found = []
    for path in paths:
        with open(path) as f:
            found += [json.loads(line) for line in f]
    return sorted(found, key=lambda r: (r["split"], r["source"], r["reason"]))


def parse(record: bytes) -> dict:
    """A record as a dict of Python values (label/score as lists)."""
    import tensorflow as tf

    example = tf.train.Example.FromString(record)
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value)
    return out
