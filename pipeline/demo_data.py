"""The demonstration dataset: real handwritten digits in ImageNet-21K layout.

scikit-learn ships the UCI handwritten digits (1,797 scans, 8x8 grayscale,
ten classes) inside its wheel, so the demo needs no download. They are
written the way the ImageNet-21K release is laid out, one tar per synset
holding `<synset>_<id>.JPEG` files, so the demo exercises the same ExampleGen
path as a real 21K run:

  <root>/span-<N>/n0900000<d>.tar      one tar per digit d
  <root>/synsets.txt                    "<synset> <name>" per line

Each span is a different deterministic rendering of the digits (seeded by
the span: order, one-pixel shifts, ink and paper tints), so a retrain on span
2 sees new images of the same classes. Images are
upscaled to `image_size` (bicubic) and tinted per image so they are real RGB.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

# Made-up synset ids in WordNet's form (n + 8 digits), one per digit.
SYNSETS = tuple(f"n0900000{d}" for d in range(10))
NAMES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
SPAN_PATTERN = "span-{SPAN}"
SYNSETS_FILE = "synsets.txt"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    # Pixel values are 0..16; scale to 0..255.
    return (data.images * (255.0 / 16.0)).astype(np.uint8), data.target


def _to_rgb_jpeg(
    image: np.ndarray, size: int, rng: np.random.Generator
) -> bytes:
    """8x8 gray digit -> size x size RGB JPEG with a shift and a tint."""
    shift = rng.integers(-1, 2, size=2)
    image = np.roll(image, tuple(shift), axis=(0, 1))
    gray = Image.fromarray(image, mode="L").resize((size, size), Image.BICUBIC)
    ink = rng.uniform(0.6, 1.0, size=3)
    paper = rng.uniform(0.0, 0.25, size=3)
    g = np.asarray(gray, np.float32)[..., None] / 255.0
    rgb = (g * ink + (1.0 - g) * paper) * 255.0
    out = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8), mode="RGB").save(
        out, format="JPEG", quality=92
    )
    return out.getvalue()


def write_span(
    root: str, span: int, image_size: int = 64, fraction: float = 1.0
) -> str:
    """Writes one span of the digits as per-synset tars.

    Args:
      root: the dataset root.
      span: the span number (1, 2, ...); it seeds the draw.
      image_size: the side of the written JPEGs.
      fraction: the share of the 1,797 digits to draw for this span.

    Returns:
      The span's directory.
    """
    images, labels = _digits()
    rng = np.random.default_rng(1000 + span)
    order = rng.permutation(len(images))[: int(round(fraction * len(images)))]
    span_dir = os.path.join(root, SPAN_PATTERN.replace("{SPAN}", str(span)))
    os.makedirs(span_dir, exist_ok=True)
    by_class: dict[int, list[int]] = {d: [] for d in range(10)}
    for i in order:
        by_class[int(labels[i])].append(int(i))
    for digit, indices in by_class.items():
        synset = SYNSETS[digit]
        path = os.path.join(span_dir, f"{synset}.tar")
        tmp = path + ".tmp"
        with tarfile.open(tmp, "w") as tar:
            for i in indices:
                data = _to_rgb_jpeg(images[i], image_size, rng)
                info = tarfile.TarInfo(f"{synset}_{span}{i:05d}.JPEG")
                info.size = len(data)
                info.mtime = 0  # Same bytes for the same span.
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    write_synsets(root)
    return span_dir


def write_synsets(root: str) -> str:
    """Writes `synsets.txt` ("<synset> <name>" per line) and returns it."""
    path = os.path.join(root, SYNSETS_FILE)
    with open(path, "w") as f:
        for synset, name in zip(SYNSETS, NAMES, strict=True):
            f.write(f"{synset} {name}\n")
    return path


def ensure_demo_data(
    root: str, spans: int = 1, image_size: int = 64, fraction: float = 1.0
) -> str:
    """Writes spans 1..`spans` under `root` unless they are there already.

    Args:
      root: the dataset root.
      spans: how many spans to have.
      image_size: the side of the JPEGs.
      fraction: the share of the digits each span holds.

    Returns:
      The input pattern ExampleGen reads: `<root>/span-{SPAN}`.
    """
    for span in range(1, spans + 1):
        span_dir = os.path.join(root, f"span-{span}")
        if not all(
            os.path.exists(os.path.join(span_dir, f"{s}.tar")) for s in SYNSETS
        ):
            write_span(root, span, image_size, fraction)
    return os.path.join(root, SPAN_PATTERN)


def write_finetune_synsets(root: str, num_classes: int) -> str:
    """Writes the finetune label space: the first `num_classes` synsets.

    Args:
      root: the dataset root.
      num_classes: how many of the ten digits to keep.

    Returns:
      The path of `finetune_synsets.txt` (one synset per line).
    """
    path = os.path.join(root, "finetune_synsets.txt")
    with open(path, "w") as f:
        f.write("".join(f"{s}\n" for s in SYNSETS[:num_classes]))
    return path
