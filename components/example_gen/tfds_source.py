"""`tfds` source: an image-classification dataset TFDS has prepared.

ImageNet-1K from its manual dir (`imagenet2012`), ImageNet-V2
(`imagenet_v2`), ImageNet-ReaL's multi-labels (`imagenet2012_real` with
`--tfds_label_key=real_label`) and so on, rewritten to the same layout as
the other sources (and through the same checks and conversions, so TFDS's
PNG/CMYK repairs are applied again if a dataset lacks them).

`--input` is a dataset name (`imagenet2012`, `imagenet2012:5.1.0`) found
in `--tfds_data_dir`, or the directory of a prepared dataset version
(anything with a `dataset_info.json`, e.g. written by
`tfds.folder_dataset.write_metadata`). Nothing is downloaded: the dataset
must already be prepared, and the driver reads one example of every split
before the pipeline starts to prove it.

The label feature is a `ClassLabel` (single-label) or a `Sequence` of
`ClassLabel` (multi-label); its names become the label map. The source id
is the `file_name` feature when the dataset has one, else TFDS's id
(`<dataset>-<split>.tfrecord-<shard>__<index>`). Each TFDS split is read
in as many units as it has shards.

Each example is isolated: one that cannot be parsed, has no label or a
label id outside the label map is rejected alone. A record file that
tf.data cannot read on (corrupt or cut) ends its slice: the rest is one
`damaged_archive` reject, with the examples lost when the split's size
is known.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from components.example_gen import config as config_lib
from components.example_gen import records, sources

FILE_NAME = "file_name"
TFDS_ID = "tfds_id"

# What a record file that cannot be read on raises inside tf.data.
_DAMAGE = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)

# One builder per process: unit after unit reads the same dataset.
_BUILDERS: dict[tuple[str, str], Any] = {}


def _label_names(feature: Any) -> tuple[list[str], bool] | None:
    """(names, multi_label) of a ClassLabel or Sequence(ClassLabel)."""
    if isinstance(feature, tfds.features.ClassLabel):
        return list(feature.names), False
    if isinstance(feature, tfds.features.Sequence) and isinstance(
        feature.feature, tfds.features.ClassLabel
    ):
        return list(feature.feature.names), True
    return None


class TfdsSource(sources.Source):
    """A prepared TFDS dataset (see the module docstring)."""

    def _new_builder(self):
        spec, data_dir = self.resolved.input.pattern, self.config.tfds_data_dir
        info = posixpath.join(spec, "dataset_info.json")
        if "/" in spec and tf.io.gfile.exists(info):
            return tfds.builder_from_directory(spec)
        return tfds.builder(spec, data_dir=data_dir or None)

    def _builder(self):
        """The worker's builder, made once per process."""
        key = (self.resolved.input.pattern, self.config.tfds_data_dir)
        if key not in _BUILDERS:
            _BUILDERS[key] = self._new_builder()
        return _BUILDERS[key]

    def plan(self) -> sources.Plan:
        config = self.config
        spec = self.resolved.input.pattern
        try:
            builder = self._new_builder()
        except Exception as e:  # DatasetNotFoundError, bad version, ...
            raise ValueError(
                f"--input={spec}: not a TFDS dataset name or the directory "
                f"of a prepared dataset ({type(e).__name__}: {e})."
            ) from e
        features = builder.info.features
        for key in (config.tfds_image_key, config.tfds_label_key):
            if key not in features:
                raise ValueError(
                    f"--input={spec}: no feature {key!r}; features: "
                    f"{sorted(features.keys())} (see --tfds_image_key / "
                    "--tfds_label_key)."
                )
        if not isinstance(features[config.tfds_image_key], tfds.features.Image):
            raise ValueError(
                f"--tfds_image_key={config.tfds_image_key} is not an Image."
            )
        labels = _label_names(features[config.tfds_label_key])
        if labels is None:
            raise ValueError(
                f"--tfds_label_key={config.tfds_label_key} is not a "
                "ClassLabel or a Sequence of ClassLabel."
            )
        names, multi_label = labels
        # Every split by default: train, validation, then the rest by name.
        items = config.tfds_splits or tuple(
            sorted(
                builder.info.splits.keys(),
                key=lambda s: (s != "train", s != "validation", s),
            )
        )
        if not items:
            raise ValueError(
                f"--input={spec}: the dataset has no prepared split in "
                f"{builder.data_dir}; prepare it first (nothing is "
                "downloaded here) or name the splits with --tfds_splits."
            )
        pairs = [config_lib.split_name_from(item) for item in items]
        out_names = [name for name, _ in pairs]
        if len(set(out_names)) != len(out_names):
            raise ValueError(f"--tfds_splits={items}: repeats a split name.")
        units = []
        for name, expr in pairs:
            self._check_readable(builder, spec, expr)
            count = self._num_units(builder, expr)
            units += [
                {
                    "id": f"{name}/{i}",
                    "split": name,
                    "expr": expr,
                    "index": i,
                    "count": count,
                }
                for i in range(count)
            ]
        descriptions = sources.read_descriptions(
            config.class_descriptions, "class_descriptions"
        )
        return sources.Plan(
            classes=sources.make_classes(names, descriptions),
            splits=tuple(out_names),
            units=units,
            multi_label=multi_label,
            inputs={
                "input": spec,
                "dataset": builder.info.full_name,
                "data_dir": str(builder.data_dir),
            },
        )

    def _check_readable(self, builder, spec: str, expr: str) -> None:
        try:
            dataset = builder.as_dataset(
                split=expr,
                decoders={
                    self.config.tfds_image_key: tfds.decode.SkipDecoding()
                },
            )
            next(iter(dataset.take(1)))
        except StopIteration:
            raise ValueError(
                f"--input={spec}: split {expr!r} is empty."
            ) from None
        except Exception as e:
            raise ValueError(
                f"--input={spec}: cannot read split {expr!r} from "
                f"{builder.data_dir} ({type(e).__name__}: {e})."
            ) from e

    @staticmethod
    def _num_units(builder, expr: str) -> int:
        try:
            return max(1, len(builder.info.splits[expr].file_instructions))
        except Exception:  # Split sizes unknown (e.g. metadata missing).
            return 1

    def read(self, unit: dict[str, Any]) -> Iterator[sources.Entry]:
        config = self.config
        builder = self._builder()
        sub_split = tfds.even_splits(unit["expr"], n=unit["count"])[
            unit["index"]
        ]
        dataset = builder.as_dataset(
            split=sub_split,
            decoders={config.tfds_image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(add_tfds_id=True),
            shuffle_files=False,
        )
        split, name = unit["split"], builder.info.name
        where_unit = (
            f"tfds:{name}/{unit['expr']} (part {unit['index'] + 1} of "
            f"{unit['count']})"
        )
        count, examples = 0, iter(tfds.as_numpy(dataset))
        while True:
            try:
                example = next(examples)
            except StopIteration:
                return
            except _DAMAGE as e:
                # A record file that cannot be read on (a corrupt or cut
                # TFRecord): tf.data cannot skip past it, so the rest of
                # this slice is lost, and counted.
                yield self._damaged(
                    builder, sub_split, split, where_unit, count, e
                )
                return
            count += 1
            yield self._entry(unit, split, name, example)

    def _entry(self, unit, split, name, example) -> sources.Entry:
        """One example -> an item or a reject; never raises."""
        config = self.config
        try:
            tfds_id = sources.escape_bytes(bytes(example[TFDS_ID]))
            source_id = tfds_id
            if FILE_NAME in example:
                source_id = sources.escape_bytes(bytes(example[FILE_NAME]))
            where = f"tfds:{name}/{unit['expr']}/{tfds_id}"
            label = np.asarray(example[config.tfds_label_key]).ravel()
            labels = [int(v) for v in label]
            data = example[config.tfds_image_key]
            if not isinstance(data, bytes):
                raise TypeError(f"image is {type(data).__name__}, not bytes")
        except Exception as e:  # A malformed example is its own problem.
            return (
                records.REJECT,
                records.make_reject(
                    split,
                    f"tfds:{name}/{unit['expr']}",
                    records.BAD_RECORD,
                    f"{type(e).__name__}: {str(e)[:500]}",
                ),
            )
        labels = [v for v in labels if v >= 0]  # -1: unlabelled (test).
        if not labels:
            return (
                records.REJECT,
                records.make_reject(
                    split, where, records.NO_LABELS, "the example has no label"
                ),
            )
        unknown = [v for v in labels if v >= len(self._names())]
        if unknown:
            return (
                records.REJECT,
                records.make_reject(
                    split,
                    where,
                    records.UNKNOWN_LABEL,
                    f"label ids {unknown} >= the {len(self._names())} classes",
                ),
            )
        return (
            records.ITEM,
            records.make_item(
                split=split,
                source=where,
                source_id=source_id,
                labels=labels,
                data=data,
            ),
        )

    def _names(self) -> list[str]:
        feature = self._builder().info.features[self.config.tfds_label_key]
        return _label_names(feature)[0]

    @staticmethod
    def _damaged(
        builder, sub_split, split, where, count, error
    ) -> sources.Entry:
        lost = None
        try:
            expected = builder.info.splits[sub_split].num_examples
            if expected:
                lost = max(0, int(expected) - count)
        except Exception:  # Sizes unknown: the count cannot be known.
            pass
        reject = records.make_reject(
            split,
            where,
            records.DAMAGED_ARCHIVE,
            f"unreadable after {count} examples: {type(error).__name__}: "
            f"{str(error)[:500]}",
        )
        reject.update(offset=count, members_lost=lost)
        return records.REJECT, reject
