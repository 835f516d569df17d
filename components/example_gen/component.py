"""The ExampleGen component: images in, an Examples artifact out.

    examples/                     (the output URI)
      Split-train/data_tfrecord-00000-of-01024[.gz] ...
      Split-validation/data_tfrecord-00000-of-00064[.gz] ...
      labels.txt                  class names in index order
      metadata.json               label map, counts, rejects, span, options
      rejects/rejects-00000-of-00016.jsonl ...  the dead-letter output
      _artifact.json, _execution.json        (written by base.execute)

`run` resolves the spans, lets the source check its inputs and plan the
work (so a missing path or an empty pattern fails before any pipeline
starts), runs the Beam pipeline, then asserts the accounting
(written + rejected == discovered + lost-in-damaged-archives, every unit
read, every shard written) before it writes the metadata (with the
damaged archives and any train/validation leakage) and sets the
artifact's properties.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from artifacts import examples as examples_lib
from components import base
from components.example_gen import (
    beam_pipeline,
    images,
    records,
    registry,
    runners,
    sources,
    spans,
)
from components.example_gen import config as config_lib

LABELS_FILE = examples_lib.LABELS_FILE
METADATA_FILE = "metadata.json"
PAYLOAD_FORMAT = "FORMAT_TF_EXAMPLE"

SPEC = base.ComponentSpec(
    name="ExampleGen",
    inputs={},
    outputs={"examples": base.EXAMPLES},
    config_type=config_lib.ExampleGenConfig,
)


class AccountingError(RuntimeError):
    """The pipeline lost or invented entries; nothing can be trusted."""


def resolve_inputs(
    config: config_lib.ExampleGenConfig,
) -> sources.ResolvedInputs:
    """Fills in `{SPAN}`/`{VERSION}` of the inputs (the latest or named).

    Raises:
      ValueError: no span matches, naming the flag and pattern.
    """
    main = spans.resolve(config.input, config.span, config.version, "input")
    validation = None
    if config.validation_input:
        validation = spans.resolve_like(
            config.validation_input, main, "validation_input"
        )
    return sources.ResolvedInputs(main, validation)


def _refuse_complete(uri: str) -> None:
    raise ValueError(
        f"--output={uri} already holds a complete ExampleGen output "
        f"({base.ARTIFACT_FILE} is there); choose a new directory or pass "
        "--overwrite."
    )


def _prepare_output(layout: beam_pipeline.Layout, overwrite: bool) -> None:
    """Clears what an unfinished run left, or the old artifact when asked.

    Without `_artifact.json` (the commit marker) whatever the directory
    holds is the partial output of a run that was killed or failed: it is
    ours to clear and redo, so a restarted run never refuses its own
    leftovers. A complete artifact is refused unless `overwrite`; then its
    marker goes first, so a rewrite killed half-way cannot look complete.
    """
    uri = layout.uri
    if base.is_complete(uri):
        if not overwrite:
            _refuse_complete(uri)
        base.retract(uri)
    old = [
        posixpath.join(uri, name.rstrip("/"))
        for name in tf.io.gfile.listdir(uri)
        if name.startswith((examples_lib.SPLIT_PREFIX, "rejects", "_work"))
        or name in (LABELS_FILE, METADATA_FILE)
    ]
    if old:
        logging.info(
            "ExampleGen: clearing the partial output of an unfinished run "
            "in %s: %s",
            uri,
            sorted(posixpath.basename(p) for p in old),
        )
    for path in old:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)


def _remove_temp_files(layout: beam_pipeline.Layout) -> None:
    """Deletes temp files of bundle attempts that died before renaming.

    A retried bundle writes its file again under a new temp name, so the
    final files are complete; the dead attempt's temp file is garbage.
    """
    dirs = [layout.split_dir(s) for s in layout.splits]
    dirs.append(layout.rejects_dir)
    for directory in dirs:
        for path in tf.io.gfile.glob(posixpath.join(directory, "*.tmp-*")):
            tf.io.gfile.remove(path)


def check_accounting(
    stats: Mapping[str, Any], plan: sources.Plan, layout: beam_pipeline.Layout
) -> None:
    """Asserts that every entry was written or rejected, none lost unseen.

    A damaged archive's unread rest is one `damaged_archive` reject that
    is not a discovered entry, hence the lost term.

    Args:
      stats: the pipeline's `stats.json`.
      plan: the source's plan (its units).
      layout: the expected shards.

    Raises:
      AccountingError: counts do not add up, a unit was not read, or a
        shard file is missing.
    """
    written, rejected = stats["written"], stats["rejected"]
    lost = stats["lost_in_damaged_archives"]
    if written + rejected != stats["discovered"] + lost:
        raise AccountingError(
            f"written {written} + rejected {rejected} != discovered "
            f"{stats['discovered']} + lost in damaged archives {lost}."
        )
    damage_rejects = stats["rejects"]["by_reason"].get(
        records.DAMAGED_ARCHIVE, 0
    )
    if damage_rejects != lost or len(stats["damaged_archives"]) != lost:
        raise AccountingError(
            f"{damage_rejects} damaged-archive rejects, "
            f"{len(stats['damaged_archives'])} damaged archives listed, "
            f"{lost} counted lost."
        )
    n = layout.num_reject_shards
    if stats["rejects"]["shards_written"] != n:
        raise AccountingError(
            f"{stats['rejects']['shards_written']} of {n} reject files "
            "were written."
        )
    if stats["units"] != len(plan.units):
        raise AccountingError(
            f"{stats['units']} of {len(plan.units)} units were read."
        )
    for split, n in layout.num_shards:
        expected = {layout.shard_path(split, i) for i in range(n)}
        found = set(
            tf.io.gfile.glob(posixpath.join(layout.split_dir(split), "*"))
        )
        if found != expected:
            raise AccountingError(
                f"Split-{split} holds {sorted(found - expected)[:5]} extra "
                f"and misses {sorted(expected - found)[:5]} shard files."
            )
        if stats["splits"][split]["shards_written"] != n:
            raise AccountingError(f"Split-{split}: a shard was written twice.")


def _metadata(config, resolved, plan, layout, stats, outcome) -> dict[str, Any]:
    names = [c.name for c in plan.classes]
    splits = {}
    for split, s in stats["splits"].items():
        splits[split] = dict(s)
        splits[split]["per_class"] = {
            names[i]: n for i, n in enumerate(s["class_counts"]) if n
        }
        del splits[split]["class_counts"]
    return {
        "source": config.source,
        "inputs": plan.inputs,
        "span": resolved.input.span,
        "version": resolved.input.version,
        "options": base.config_to_json(config.redacted()),
        "compression": config.compression,
        "num_shards": dict(layout.num_shards),
        "file_format": _file_format(config.compression),
        "payload_format": PAYLOAD_FORMAT,
        "features": sorted(
            examples_lib.feature_spec(plan.multi_label, plan.with_scores)
        ),
        "num_classes": len(plan.classes),
        "multi_label": plan.multi_label,
        "label_map": [c.to_json() for c in plan.classes],
        "splits": splits,
        "discovered": stats["discovered"],
        "written": stats["written"],
        "rejected": stats["rejected"],
        "lost_in_damaged_archives": stats["lost_in_damaged_archives"],
        "damaged_archives": stats["damaged_archives"],
        "cross_split_duplicates": (
            stats["cross_split_duplicates"] if config.check_leakage else None
        ),
        "rejects": {
            **stats["rejects"],
            "path": layout.rejects_pattern,
            "num_shards": layout.num_reject_shards,
        },
        "conversions": stats["conversions"],
        "fingerprint": stats["fingerprint"],
        "notes": plan.notes,
        "runner": outcome.runner,
        "beam_metrics": outcome.metrics,
    }


def _file_format(compression: str) -> str:
    # TFX's `file_format` custom property values.
    return "tfrecords_gzip" if compression == config_lib.GZIP else "tfrecords"


class ExampleGen(base.Component):
    """Writes an Examples artifact from one of the four sources."""

    SPEC = SPEC

    def check_rewrite(
        self, uri: str, config: config_lib.ExampleGenConfig
    ) -> None:
        """Refuses to replace a complete Examples artifact without
        `overwrite` (its consumers may still read it)."""
        if not config.overwrite:
            _refuse_complete(uri)

    def run(
        self,
        inputs: Mapping[str, base.Artifact],
        outputs: Mapping[str, base.Artifact],
        config: config_lib.ExampleGenConfig,
    ) -> None:
        """Runs the pipeline and fills in the artifact (module docstring).

        Args:
          inputs: none.
          outputs: `examples`, an Examples artifact to write.
          config: the execution properties.

        Raises:
          ValueError: a bad config or a missing/empty input (before the
            pipeline starts), or an output that already holds a run.
          AccountingError: the pipeline's counts do not add up.
          RuntimeError: the pipeline failed.
        """
        del inputs  # ExampleGen has none.
        config.validate()
        runners.check_beam_args(list(config.beam_pipeline_args))
        artifact = outputs["examples"]
        resolved = resolve_inputs(config)
        source = registry.make_source(config, resolved)
        plan = source.plan()
        layout = beam_pipeline.Layout(
            uri=artifact.uri,
            num_shards=tuple(
                (s, config.split_num_shards(s)) for s in plan.splits
            ),
            compression=config.compression,
            num_reject_shards=config.num_reject_shards,
        )
        _prepare_output(layout, config.overwrite)
        options = images.ImageOptions(
            resize_shorter_side=config.resize_shorter_side,
            jpeg_quality=config.jpeg_quality,
            max_pixels=config.max_pixels,
            max_file_bytes=config.max_file_bytes,
        )

        def build(pipeline):
            beam_pipeline.build(
                pipeline,
                source,
                plan,
                layout,
                options,
                config.seed,
                config.dedup,
                config.check_leakage,
            )

        outcome = runners.run(config, build)
        stats = base.read_json(layout.stats_path)
        _remove_temp_files(layout)
        check_accounting(stats, plan, layout)
        examples_lib.write_labels(artifact.uri, [c.name for c in plan.classes])
        base.write_json(
            posixpath.join(artifact.uri, METADATA_FILE),
            _metadata(config, resolved, plan, layout, stats, outcome),
        )
        tf.io.gfile.rmtree(layout.work_dir)
        artifact.properties.update(
            {
                "split_names": list(plan.splits),
                "span": resolved.input.span,
                "version": resolved.input.version,
                "num_classes": len(plan.classes),
                "multi_label": plan.multi_label,
                "compression": config.compression,
                "file_format": _file_format(config.compression),
                "payload_format": PAYLOAD_FORMAT,
                "num_examples": {
                    s: stats["splits"][s]["num_examples"] for s in plan.splits
                },
                "fingerprint": stats["fingerprint"],
                "source": config.source,
            }
        )
