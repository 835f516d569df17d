"""The ExampleGen execution properties: one typed, frozen config.

Every field maps to a CLI flag of the same name (`main.py`), and `validate`
checks the combinations before anything touches the input, so a bad command
line fails fast with the flag named.
"""

from __future__ import annotations

import dataclasses
import os
import re

from artifacts import examples as examples_lib

# The source modes: class folders, ImageNet-21K per-synset tars,
# JFT-style multi-label manifests and prepared TFDS datasets.
IMAGE_FOLDER = "image_folder"
IMAGENET21K = "imagenet21k"
JFT = "jft"
TFDS = "tfds"
SOURCES = (IMAGE_FOLDER, IMAGENET21K, JFT, TFDS)

TRAIN = "train"
VALIDATION = "validation"

# Compression of the TFRecord shards. The default is NONE, from
# bench/example_gen_bench.py on 500x375 photo-like JPEGs resized to 256,
# in CPU time per record: GZIP saved 3.2% of the bytes (JPEG data is
# already entropy-coded) but cost 1.07 ms to write against 0.04 ms (a
# quarter again of the 4.5 ms conversion) and 0.17 ms to read against
# 0.07 ms; the extra 0.10 ms is ~5% of the trainer's parse + decode +
# crop (2.1 ms), and the trainer-like read measured 5-19% slower. TPU
# hosts are input-bound, so 3% of storage is not worth the CPU.
# The values are the Examples artifact's (artifacts.examples).
GZIP = examples_lib.GZIP
NONE = examples_lib.NONE
COMPRESSIONS = examples_lib.COMPRESSIONS

# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): about
# 9,500 x 9,500 pixels. ImageNet's largest images are far smaller.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_FILE_BYTES = 64 << 20

# Beam options whose values are secrets (S3 keys and session tokens, Azure
# connection strings, passwords, API keys, ...), by a word in their name.
_SECRET_OPTION = re.compile(
    r"secret|passw|token|credential|access_key|connection_string|api_?key"
    r"|private_key|auth",
    re.IGNORECASE,
)
# user:password@ in a URL-valued option (e.g. a Flink or Spark master).
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^/@\s]+@")
REDACTED = "<redacted>"

# "DirectRunner" is never Beam's switching runner here: see runners.py.
DIRECT_RUNNER = "DirectRunner"


@dataclasses.dataclass(frozen=True)
class ExampleGenConfig:
    """What to read, how to convert it and how to write it.

    Attributes:
      source: one of `SOURCES`.
      input: the training input. image_folder: `<root>/<class>/*`;
        imagenet21k: a folder of `<synset>.tar`; jft: a JSONL or CSV
        manifest (a glob is allowed); tfds: a dataset name
        (`imagenet2012`, `imagenet2012:5.1.0`) or the directory of a
        prepared dataset version. May hold `{SPAN}`/`{SPAN:N}` and
        `{VERSION}` (the TFX convention).
      validation_input: image_folder: a `<root>/<class>/*` tree, or a flat
        folder named with `validation_labels`; jft: a validation manifest.
      validation_labels: image_folder: a file mapping the validation
        images to classes, either `<file name> <class>` per line (CSV,
        TSV or spaces) or one class per line in sorted file-name order
        (TFDS's `imagenet2012_validation_labels.txt`).
      synsets: a file with one class (synset) per line: the classes and
        their indices for image_folder and imagenet21k. Default: the
        sorted folder or tar names found.
      labels_vocab: jft: the label vocabulary, one name per line (or
        `name<TAB>description`); the line number is the class index.
      class_descriptions: optional `name<TAB or space>description` lines
        (ImageNet's `words.txt`, `LOC_synset_mapping.txt`).
      validation_per_class: when the source has no validation input
        (imagenet21k, image_folder without `validation_input`), hold out
        this many images per class, chosen by a stable hash of the file
        name; at most half of a class is held out.
      validation_fraction: instead of a count, hold out this fraction
        (by the same hash). Overrides `validation_per_class` when > 0.
      tfds_data_dir: the TFDS data dir for a dataset given by name.
      tfds_splits: `name=tfds_split` or `split` items, e.g.
        `("train", "minival=validation[:10%]")`. Default: every split.
      tfds_image_key: the image feature of the TFDS dataset.
      tfds_label_key: the label feature (`ClassLabel` or a `Sequence` of
        `ClassLabel`, e.g. ImageNet-ReaL's `real_label`).
      span: the span to process; None = the latest one.
      version: the version within the span; None = the latest one.
      num_shards: shards of the train split.
      num_eval_shards: shards of every other split.
      resize_shorter_side: when > 0, images whose shorter side is longer
        are resized down to it (bounded storage for 21K and JFT).
      jpeg_quality: quality of re-encoded JPEGs.
      max_pixels: images with more pixels are rejected (decompression
        bombs), before they are decoded. Pillow's own ceiling (twice its
        `MAX_IMAGE_PIXELS`, about 179M pixels) applies above this.
      max_file_bytes: files or tar members larger than this are rejected
        without being read.
      compression: `GZIP` or `NONE` (see `COMPRESSIONS`).
      seed: shard assignment and in-shard order; same input and seed give
        byte-identical shards.
      dedup: reject byte-identical images within a split (the copy with
        the smallest source id is kept).
      check_leakage: find byte-identical images in different splits
        (train/validation leakage) and report them in the metadata.
      image_root: jft: the folder (or bucket prefix) every image of the
        manifests must lie under; relative paths are taken from it.
        Default: each manifest's own folder.
      allow_outside_image_root: jft: accept images anywhere (absolute
        paths, `..`, other buckets) instead of rejecting them.
      num_reject_shards: files the rejects are written to (keyed by a
        hash of the source, so no one worker holds them all).
      overwrite: replace an existing Examples artifact at the output.
      runner: a Beam runner name or class path. `DirectRunner` (default)
        runs Beam's FnApiRunner with worker processes; `DaskRunner` runs
        on a dask.distributed cluster; anything else (DataflowRunner,
        FlinkRunner, SparkRunner, ...) is passed to Beam.
      num_workers: local worker processes; 0 = one per core.
      dask_address: the scheduler of a running dask.distributed cluster.
      beam_pipeline_args: further Beam options, passed through.
    """

    source: str
    input: str
    validation_input: str = ""
    validation_labels: str = ""
    synsets: str = ""
    labels_vocab: str = ""
    class_descriptions: str = ""
    validation_per_class: int = 50
    validation_fraction: float = 0.0
    tfds_data_dir: str = ""
    tfds_splits: tuple[str, ...] = ()
    tfds_image_key: str = "image"
    tfds_label_key: str = "label"
    span: int | None = None
    version: int | None = None
    num_shards: int = 1024
    num_eval_shards: int = 64
    resize_shorter_side: int = 0
    jpeg_quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    compression: str = NONE
    seed: int = 0
    dedup: bool = True
    check_leakage: bool = True
    image_root: str = ""
    allow_outside_image_root: bool = False
    num_reject_shards: int = 16
    overwrite: bool = False
    runner: str = DIRECT_RUNNER
    num_workers: int = 0
    dask_address: str = ""
    beam_pipeline_args: tuple[str, ...] = ()

    def validate(self) -> None:
        """Checks the fields and their combinations.

        Raises:
          ValueError: naming the offending flag.
        """
        if self.source not in SOURCES:
            raise ValueError(
                f"--source={self.source!r}: expected one of {SOURCES}."
            )
        if not self.input:
            raise ValueError("--input is required.")
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"--compression={self.compression!r}: expected one of "
                f"{COMPRESSIONS}."
            )
        for name in ("num_shards", "num_eval_shards", "num_reject_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1.")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("--jpeg_quality must be in [1, 100].")
        if self.resize_shorter_side < 0:
            raise ValueError("--resize_shorter_side must be >= 0 (0 = off).")
        if self.max_pixels < 1 or self.max_file_bytes < 1:
            raise ValueError("--max_pixels and --max_file_bytes must be > 0.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("--validation_fraction must be in [0, 1).")
        if self.validation_per_class < 0:
            raise ValueError("--validation_per_class must be >= 0.")
        if self.num_workers < 0:
            raise ValueError("--num_workers must be >= 0 (0 = one per core).")
        if self.source == JFT and not self.labels_vocab:
            raise ValueError("--source=jft needs --labels_vocab.")
        if self.validation_labels and self.source != IMAGE_FOLDER:
            raise ValueError(
                "--validation_labels is for --source=image_folder."
            )
        if self.validation_labels and not self.validation_input:
            raise ValueError(
                "--validation_labels needs --validation_input (the folder of "
                "validation images)."
            )
        if self.validation_input and self.source in (IMAGENET21K, TFDS):
            raise ValueError(
                f"--validation_input is not used by --source={self.source}; "
                "see --validation_per_class / --tfds_splits."
            )
        if (
            self.image_root or self.allow_outside_image_root
        ) and self.source != JFT:
            raise ValueError(
                "--image_root and --allow_outside_image_root are for "
                "--source=jft."
            )
        if self.synsets and self.source not in (IMAGE_FOLDER, IMAGENET21K):
            raise ValueError("--synsets is for image_folder and imagenet21k.")
        if self.version is not None and self.span is None:
            raise ValueError("--version needs --span.")
        if self.tfds_splits and self.source != TFDS:
            raise ValueError("--tfds_splits is for --source=tfds.")
        for item in self.tfds_splits:
            split_name_from(item)

    def redacted(self) -> ExampleGenConfig:
        """This config with secret Beam options masked, for records."""
        return dataclasses.replace(
            self, beam_pipeline_args=redact_args(self.beam_pipeline_args)
        )

    def split_num_shards(self, split: str) -> int:
        """The fixed shard count of `split`."""
        return self.num_shards if split == TRAIN else self.num_eval_shards

    @property
    def holds_out_validation(self) -> bool:
        """Whether a validation split is carved out of the training data."""
        return self.validation_fraction > 0 or self.validation_per_class > 0


def split_name_from(item: str) -> tuple[str, str]:
    """Parses a `--tfds_splits` item into (output split, TFDS split).

    Args:
      item: `name=tfds_split` or a plain TFDS split name.

    Returns:
      The output split name (a `Split-<name>` directory) and the TFDS
      split expression.

    Raises:
      ValueError: the output name is not a plain identifier.
    """
    name, sep, expr = item.partition("=")
    if not sep:
        name, expr = item, item
    name, expr = name.strip(), expr.strip()
    check_split_name(name, f"--tfds_splits item {item!r}")
    if not expr:
        raise ValueError(f"--tfds_splits item {item!r} has no TFDS split.")
    return name, expr


def check_split_name(name: str, where: str) -> str:
    """Returns `name` if it is usable as `Split-<name>`; raises otherwise."""
    ok = name and all(c.isalnum() or c in "_-" for c in name)
    if not ok or name != os.path.basename(name):
        raise ValueError(
            f"{where}: split name {name!r} must be letters, digits, _ or -; "
            "write name=tfds_split to name a sliced split."
        )
    return name


def redact_args(args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Beam options with secret values masked, for logs and records.

    `--name=value` and `--name value` are both masked when the option's
    name says it holds a secret; a password inside a URL is masked in any
    option.

    Args:
      args: Beam command-line options.

    Returns:
      The options with each secret replaced by `<redacted>`.
    """
    out, mask_next = [], False
    for arg in args:
        if mask_next and not arg.startswith("-"):
            out.append(REDACTED)
            mask_next = False
            continue
        mask_next = False
        if arg.startswith("-"):
            name, sep, _ = arg.lstrip("-").partition("=")
            if _SECRET_OPTION.search(name):
                if sep:
                    arg = f"{arg.split('=', 1)[0]}={REDACTED}"
                else:
                    mask_next = True
        out.append(_URL_PASSWORD.sub(rf"\1{REDACTED}@", arg))
    return tuple(out)
