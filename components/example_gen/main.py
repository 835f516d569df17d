r"""ExampleGen CLI: image datasets to a TFRecord Examples artifact.

    bazel run //components:example_gen -- \
      --source=image_folder --input=/data/imagenet/train \
      --validation_input=/data/imagenet/val \
      --validation_labels=/data/imagenet/imagenet2012_validation_labels.txt \
      --output=~/coatnet_runs/examples/imagenet1k

Flags this binary does not know are Beam pipeline options and are passed
through (`--project=... --region=... --temp_location=gs://...`), as is
`--beam_pipeline_args="..."` (TFX's convention). See `runners.py` for the
runners and `config.py` for every flag's meaning.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys

from absl import app, flags

from components import base, cli
from components.example_gen import component, runners
from components.example_gen import config as config_lib

_DEFAULTS = config_lib.ExampleGenConfig(
    source=config_lib.IMAGE_FOLDER, input="-"
)

flags.DEFINE_enum(
    "source", None, list(config_lib.SOURCES), "Where the images come from."
)
flags.DEFINE_string(
    "input", None, "Training input: folder, tars folder, manifest or TFDS name."
)
flags.DEFINE_string("output", None, "The Examples artifact directory.")
flags.DEFINE_multi_string(
    "set", [], "field=value override of the config, after the flags."
)
flags.DEFINE_string("validation_input", "", "Validation folder or manifest.")
flags.DEFINE_string(
    "validation_labels", "", "image_folder: labels of a flat validation folder."
)
flags.DEFINE_string("synsets", "", "Class list file (one synset per line).")
flags.DEFINE_string("labels_vocab", "", "jft: label vocabulary file.")
flags.DEFINE_string(
    "class_descriptions", "", "`name<TAB>description` lines (words.txt)."
)
flags.DEFINE_integer(
    "validation_per_class",
    _DEFAULTS.validation_per_class,
    "Held-out validation images per class (by file-name hash).",
)
flags.DEFINE_float(
    "validation_fraction", 0.0, "Held-out validation fraction instead."
)
flags.DEFINE_string("tfds_data_dir", "", "tfds: the TFDS data dir.")
flags.DEFINE_list(
    "tfds_splits", [], "tfds: `name=tfds_split` or split names (default all)."
)
flags.DEFINE_string("tfds_image_key", "image", "tfds: the image feature.")
flags.DEFINE_string("tfds_label_key", "label", "tfds: the label feature.")
flags.DEFINE_integer("span", None, "The {SPAN} to process (default latest).")
flags.DEFINE_integer("version", None, "The {VERSION} (default latest).")
flags.DEFINE_integer("num_shards", _DEFAULTS.num_shards, "Train shards.")
flags.DEFINE_integer(
    "num_eval_shards", _DEFAULTS.num_eval_shards, "Shards of other splits."
)
flags.DEFINE_integer(
    "resize_shorter_side", 0, "Resize so the shorter side is at most this."
)
flags.DEFINE_integer("jpeg_quality", _DEFAULTS.jpeg_quality, "JPEG quality.")
flags.DEFINE_integer(
    "max_pixels", _DEFAULTS.max_pixels, "Reject images with more pixels."
)
flags.DEFINE_integer(
    "max_file_bytes", _DEFAULTS.max_file_bytes, "Reject larger files."
)
flags.DEFINE_enum(
    "compression",
    _DEFAULTS.compression,
    list(config_lib.COMPRESSIONS),
    "Shard compression.",
)
flags.DEFINE_integer("seed", 0, "Shard placement and order.")
flags.DEFINE_boolean("dedup", True, "Reject byte-identical duplicates.")
flags.DEFINE_boolean(
    "check_leakage", True, "Report identical images across splits."
)
flags.DEFINE_string(
    "image_root", "", "jft: images must lie under this (default: manifest's)."
)
flags.DEFINE_boolean(
    "allow_outside_image_root", False, "jft: accept images anywhere."
)
flags.DEFINE_integer(
    "num_reject_shards", _DEFAULTS.num_reject_shards, "Files of rejects."
)
flags.DEFINE_boolean("overwrite", False, "Replace an existing artifact.")
flags.DEFINE_string(
    "runner",
    config_lib.DIRECT_RUNNER,
    "DirectRunner (local processes), DaskRunner, DataflowRunner, ...",
)
flags.DEFINE_integer("num_workers", 0, "Local worker processes (0 = cores).")
flags.DEFINE_string("dask_address", "", "Scheduler of a dask cluster.")
flags.DEFINE_string(
    "beam_pipeline_args", "", "More Beam options, in shell syntax."
)
flags.DEFINE_string(
    "config_file", "", "JSON with config fields; flags given override it."
)

FLAGS = flags.FLAGS

# Flags holding local paths: relative ones are resolved against the
# directory `bazel run` was called from.
_PATH_FLAGS = (
    "validation_input",
    "validation_labels",
    "synsets",
    "labels_vocab",
    "class_descriptions",
    "tfds_data_dir",
    "image_root",
)


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith(("~", "."))


def build_config(passthrough: list[str]) -> config_lib.ExampleGenConfig:
    """The config from --config_file, the flags given and pass-through args.

    Args:
      passthrough: command-line arguments no flag claimed (Beam options).

    Returns:
      The validated config.

    Raises:
      ValueError: a required flag is missing or a value is invalid.
    """
    data = dict(cli.load_config_overrides(FLAGS.config_file))
    for field in dataclasses.fields(config_lib.ExampleGenConfig):
        name = field.name
        if name == "beam_pipeline_args" or name not in FLAGS:
            continue
        if FLAGS[name].present or name not in data:
            value = FLAGS[name].value
            data[name] = tuple(value) if isinstance(value, list) else value
    for name in ("source", "input"):
        if not data.get(name):
            raise ValueError(f"--{name} is required.")
    for name in _PATH_FLAGS:
        if data.get(name):
            data[name] = cli.resolve_user_path(data[name])
    if data["source"] != config_lib.TFDS or _looks_like_path(data["input"]):
        data["input"] = cli.resolve_user_path(data["input"])
    data["beam_pipeline_args"] = (
        *data.get("beam_pipeline_args", ()),
        *shlex.split(FLAGS.beam_pipeline_args),
        *passthrough,
    )
    config = cli.component_config(config_lib.ExampleGenConfig, data, FLAGS.set)
    config.validate()
    return config


def main(argv: list[str]) -> None:
    try:
        config = build_config(list(argv[1:]))
        # Bad pass-through options fail before anything is written.
        runners.check_beam_args(list(config.beam_pipeline_args))
        if not FLAGS.output:
            raise ValueError("--output is required.")
        output = cli.check_output_location(
            cli.resolve_user_path(FLAGS.output), "output"
        )
        outputs = base.execute(
            component.ExampleGen(), {}, {"examples": output}, config
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    cli.print_outputs(outputs)


def _parse_flags(argv: list[str]) -> list[str]:
    # Unknown flags stay in argv for Beam instead of failing absl parsing.
    try:
        return FLAGS(argv, known_only=True)
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
