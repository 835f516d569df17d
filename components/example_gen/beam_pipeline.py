"""The Beam graph: discover -> reshuffle -> convert -> shard -> write.

    units -> Discover -+-> entries -> Reshuffle -> Convert -+-> records
                       |                                    +-> rejects
                       +-> unit summaries
    records + every (split, shard) key -> GroupByKey -> WriteShard
                                             -> summaries, duplicates
    rejects + duplicates + every reject shard key -> GroupByKey
                                             -> WriteRejects -> summaries
    (digest, split, source) -> GroupByKey -> leaks across splits
    all summaries -> GroupByKey -> WriteStats (stats.json)

- The discovery step fans a few thousand units (class folders, tars,
  manifest ranges, TFDS slices) out to one entry per image; `Reshuffle`
  then breaks fusion so the costly conversion spreads over all workers.
- Each record goes to shard `hash(seed, split, sha256(bytes)) % n` and is
  ordered in its shard by `hash(seed, source id, sha256)`: shuffled, with
  a fixed shard count, and the same bytes in the same place on every run
  and runner. Byte-identical images meet in one shard, where all but the
  one with the smallest source id are rejected as duplicates. Beam's
  `WriteToTFRecord` would place records by bundle, so shards are written
  here (temp file, then rename: a retried bundle rewrites the same file).
- Dead letters are plain elements routed by kind through `Filter`s rather
  than `TaggedOutput`s, because Beam's DaskRunner merges the tagged
  outputs of a DoFn into its main output. For the same reason the graph
  ends in a single transform (`WriteStats`): the DaskRunner computes only
  the last transform's lineage.
- Rejects go to `num_reject_shards` files by a hash of their source, so
  a run with millions of rejects does not gather them on one worker.
- Byte-identical images in different splits (train/validation leakage)
  are found by grouping the digests of every converted image, and
  reported; only the digests and sources travel, never the bytes.
- `WriteStats` writes the totals (discovered, written per split and
  class, rejects by reason, the damaged archives and what they lost, the
  leaks, the input fingerprint) to `stats.json`; the component asserts
  written + rejected == discovered + lost-in-damaged-archives from it.
  Beam counters carry the same numbers for runners with metrics.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import tensorflow as tf

from components.example_gen import config as config_lib
from components.example_gen import images, records, sources

SUMMARY = "summary"
RECORD = "record"
DIGEST = "digest"
LEAK = "leak"
# Leaked images listed in the stats (all are counted).
_MAX_LEAKS_LISTED = 1000
CLASS_COUNT = "class_count"
_NAMESPACE = "example_gen"
_MASK64 = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the artifact's files go (TFX Examples layout).

    Attributes:
      uri: the artifact root.
      num_shards: (split, shard count) pairs.
      compression: `GZIP` or `NONE`.
      num_reject_shards: files of `rejects/`.
    """

    uri: str
    num_shards: tuple[tuple[str, int], ...]
    compression: str
    num_reject_shards: int = 1

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.num_shards)

    def split_dir(self, split: str) -> str:
        return posixpath.join(self.uri, f"Split-{split}")

    def shard_path(self, split: str, shard: int) -> str:
        n = dict(self.num_shards)[split]
        suffix = ".gz" if self.compression == config_lib.GZIP else ""
        return posixpath.join(
            self.split_dir(split),
            f"data_tfrecord-{shard:05d}-of-{n:05d}{suffix}",
        )

    @property
    def rejects_dir(self) -> str:
        return posixpath.join(self.uri, "rejects")

    def rejects_path(self, shard: int) -> str:
        return posixpath.join(
            self.rejects_dir,
            f"rejects-{shard:05d}-of-{self.num_reject_shards:05d}.jsonl",
        )

    @property
    def rejects_pattern(self) -> str:
        """The reject files, relative to the artifact root (a glob)."""
        return f"rejects/rejects-*-of-{self.num_reject_shards:05d}.jsonl"

    @property
    def work_dir(self) -> str:
        return posixpath.join(self.uri, "_work")

    @property
    def stats_path(self) -> str:
        return posixpath.join(self.work_dir, "stats.json")


def _write_atomically(path: str, write) -> int:
    """Writes via a unique temp file renamed over `path`; returns bytes."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(posixpath.dirname(path))
    write(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return tf.io.gfile.stat(path).length


def _fingerprint_part(entry_digest: str, fallback: str) -> int:
    if entry_digest:
        return int(entry_digest[:16], 16)
    return records.stable_hash(fallback)


def _counter(name: str):
    return beam.metrics.Metrics.counter(_NAMESPACE, name)


def _is_damage(entry: tuple[str, Any]) -> bool:
    return (
        entry[0] == records.REJECT
        and entry[1]["reason"] == records.DAMAGED_ARCHIVE
    )


class DiscoverFn(beam.DoFn):
    """Unit -> its entries, then one summary with the number discovered.

    A `damaged_archive` reject is not a discovered entry: it stands for
    the unread rest of an archive, so it is counted as lost, and
    written + rejected == discovered + lost.
    """

    def __init__(self, source: sources.Source):
        self._source = source
        self._discovered = _counter("discovered")
        self._lost = _counter("lost_in_damaged_archives")

    def process(self, unit: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        count, damaged = 0, []
        for entry in self._source.read(unit):
            if _is_damage(entry):
                r = entry[1]
                damaged.append(
                    {
                        "archive": r["source"],
                        "offset": r.get("offset"),
                        "members_lost": r.get("members_lost"),
                        "problem": r["error"],
                    }
                )
            else:
                count += 1
            yield entry
        self._discovered.inc(count)
        self._lost.inc(len(damaged))
        yield (
            SUMMARY,
            {
                "type": "unit",
                "id": unit["id"],
                "discovered": count,
                "lost": len(damaged),
                "damaged": damaged,
            },
        )


class ConvertFn(beam.DoFn):
    """Entry -> (RECORD, ((split, shard), record)) or (REJECT, reject)."""

    def __init__(
        self,
        options: images.ImageOptions,
        layout: Layout,
        seed: int,
        check_leakage: bool = False,
    ):
        self._options = options
        self._num_shards = dict(layout.num_shards)
        self._seed = seed
        self._check_leakage = check_leakage
        self._converted = _counter("converted")

    def process(self, entry: tuple[str, dict[str, Any]]):
        kind, item = entry
        if kind == records.REJECT:
            yield entry
            return
        data = sources.read_item(item, self._options.max_file_bytes)
        if isinstance(data, dict):
            yield records.REJECT, data
            return
        split, data_digest = item["split"], records.digest(data)
        try:
            image = images.convert(data, self._options)
        except images.ImageRejected as e:
            yield (
                records.REJECT,
                records.make_reject(
                    split, item["source"], e.reason, e.message, data_digest
                ),
            )
            return
        example = records.make_example(
            image.jpeg,
            image.height,
            image.width,
            item["labels"],
            item["scores"],
            item["source_id"],
        )
        self._converted.inc()
        shard = records.stable_hash(self._seed, split, data_digest)
        order = records.stable_hash(self._seed, item["source_id"], data_digest)
        record = (
            order,
            data_digest,
            item["source_id"],
            item["source"],
            example,
            item["labels"],
            image.conversions,
        )
        yield RECORD, ((split, shard % self._num_shards[split]), record)
        if self._check_leakage:
            yield DIGEST, (data_digest, (split, item["source"]))


class WriteShardFn(beam.DoFn):
    """(split, shard) and its records -> the shard file; summaries out."""

    def __init__(self, layout: Layout, dedup: bool):
        self._layout = layout
        self._dedup = dedup
        self._written = _counter("written")

    def process(self, keyed: tuple[tuple[str, int], Iterable[Any]]):
        (split, shard), values = keyed
        # The order hash, then the ids and bytes to break its (unlikely)
        # ties: the same records always come out in the same order.
        batch = sorted(
            (v for v in values if v is not None),
            key=lambda r: (r[0], r[2], r[3], r[4]),
        )
        kept, duplicates = batch, []
        if self._dedup:
            kept, duplicates = _dedupe(batch)
        for dup, winner in duplicates:
            yield (
                records.REJECT,
                records.make_reject(
                    split,
                    dup[3],
                    records.DUPLICATE,
                    f"same bytes as {winner[3]}",
                    dup[1],
                ),
            )
        options = tf.io.TFRecordOptions(
            compression_type="GZIP"
            if self._layout.compression == config_lib.GZIP
            else ""
        )

        def write(path):
            with tf.io.TFRecordWriter(path, options) as writer:
                for record in kept:
                    writer.write(record[4])

        size = _write_atomically(self._layout.shard_path(split, shard), write)
        self._written.inc(len(kept))
        class_counts = collections.Counter()
        conversions = collections.Counter()
        total, xor = 0, 0
        for record in kept:
            class_counts.update(record[5])
            conversions.update(record[6])
            part = _fingerprint_part(record[1], record[2])
            total, xor = (total + part) & _MASK64, xor ^ part
        for label, count in sorted(class_counts.items()):
            yield CLASS_COUNT, ((split, label), count)
        yield (
            SUMMARY,
            {
                "type": "shard",
                "split": split,
                "shard": shard,
                "count": len(kept),
                "bytes": size,
                "conversions": dict(conversions),
                "fingerprint": [len(kept), total, xor],
            },
        )


def _dedupe(batch: list[Any]) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """Keeps one record per digest (smallest source id); lists the rest."""
    winners: dict[str, Any] = {}
    for record in batch:
        best = winners.get(record[1])
        if best is None or (record[2], record[3]) < (best[2], best[3]):
            winners[record[1]] = record
    kept, duplicates = [], []
    for record in batch:
        winner = winners[record[1]]
        if record is winner:
            kept.append(record)
        else:
            duplicates.append((record, winner))
    return kept, duplicates


class WriteRejectsFn(beam.DoFn):
    """One shard of rejects -> `rejects/rejects-SSSSS-of-NNNNN.jsonl`."""

    def __init__(self, layout: Layout):
        self._layout = layout
        self._rejected = _counter("rejected")

    def process(self, keyed: tuple[int, Iterable[Any]]):
        shard, values = keyed
        rejects = sorted(
            (v for v in values if v is not None),
            key=lambda r: (r["split"], r["source"], r["reason"], r["error"]),
        )
        by_reason = collections.Counter(r["reason"] for r in rejects)
        for reason, count in by_reason.items():
            _counter(f"rejected_{reason}").inc(count)
        self._rejected.inc(len(rejects))

        def write(path):
            with tf.io.gfile.GFile(path, "w") as f:
                f.write("")  # GFile creates the file on the first write.
                for r in rejects:
                    f.write(json.dumps(r, sort_keys=True) + "\n")

        _write_atomically(self._layout.rejects_path(shard), write)
        total, xor = 0, 0
        for r in rejects:
            part = _fingerprint_part(r["digest"], r["source"] + r["reason"])
            total, xor = (total + part) & _MASK64, xor ^ part
        by_split = collections.defaultdict(collections.Counter)
        for r in rejects:
            by_split[r["split"]][r["reason"]] += 1
        yield {
            "type": "rejects",
            "shard": shard,
            "count": len(rejects),
            "by_reason": dict(by_reason),
            "by_split": {s: dict(c) for s, c in by_split.items()},
            "fingerprint": [len(rejects), total, xor],
        }


def _leaks(keyed: tuple[str, Iterable[tuple[str, str]]]):
    """Digest and its (split, source)s -> a leak summary if >1 split."""
    digest, copies = keyed
    copies = sorted(set(copies))
    if len({split for split, _ in copies}) > 1:
        yield {
            "type": LEAK,
            "digest": digest,
            "copies": [{"split": s, "source": src} for s, src in copies],
        }


class WriteStatsFn(beam.DoFn):
    """Every summary -> one `stats.json` with the run's totals."""

    def __init__(self, layout: Layout, num_classes: int):
        self._layout = layout
        self._num_classes = num_classes

    def process(self, keyed: tuple[int, Iterable[dict[str, Any]]]):
        _, summaries = keyed
        splits = {
            split: {
                "num_examples": 0,
                "bytes": 0,
                "num_shards": n,
                "shards_written": 0,
                "empty_shards": 0,
                "class_counts": [0] * self._num_classes,
            }
            for split, n in self._layout.num_shards
        }
        conversions = collections.Counter()
        fingerprint = [0, 0, 0]
        stats = {"discovered": 0, "units": 0, "lost_in_damaged_archives": 0}
        rejects = {
            "count": 0,
            "shards_written": 0,
            "by_reason": collections.Counter(),
            "by_split": collections.defaultdict(collections.Counter),
        }
        damaged, leaks = [], []
        for s in summaries:
            kind = s["type"]
            if kind == "unit":
                stats["units"] += 1
                stats["discovered"] += s["discovered"]
                stats["lost_in_damaged_archives"] += s["lost"]
                damaged += s["damaged"]
            elif kind == LEAK:
                leaks.append(s)
            elif kind == "shard":
                split = splits[s["split"]]
                split["num_examples"] += s["count"]
                split["bytes"] += s["bytes"]
                split["shards_written"] += 1
                split["empty_shards"] += s["count"] == 0
                conversions.update(s["conversions"])
            elif kind == CLASS_COUNT:
                splits[s["split"]]["class_counts"][s["label"]] += s["count"]
            elif kind == "rejects":
                rejects["count"] += s["count"]
                rejects["shards_written"] += 1
                rejects["by_reason"].update(s["by_reason"])
                for split, reasons in s["by_split"].items():
                    rejects["by_split"][split].update(reasons)
            if "fingerprint" in s:
                n, total, xor = s["fingerprint"]
                fingerprint = [
                    fingerprint[0] + n,
                    (fingerprint[1] + total) & _MASK64,
                    fingerprint[2] ^ xor,
                ]
        stats["splits"] = splits
        stats["written"] = sum(s["num_examples"] for s in splits.values())
        rejects["by_reason"] = dict(sorted(rejects["by_reason"].items()))
        rejects["by_split"] = {
            s: dict(sorted(c.items()))
            for s, c in sorted(rejects["by_split"].items())
        }
        stats["rejects"] = rejects
        stats["rejected"] = rejects["count"]
        stats["damaged_archives"] = sorted(
            damaged, key=lambda d: (d["archive"], d["offset"] or 0)
        )
        leaks.sort(
            key=lambda x: [(c["split"], c["source"]) for c in x["copies"]]
        )
        stats["cross_split_duplicates"] = {
            "count": len(leaks),
            "images": sum(len(x["copies"]) for x in leaks),
            "listed": [
                {"digest": x["digest"], "copies": x["copies"]}
                for x in leaks[:_MAX_LEAKS_LISTED]
            ],
        }
        stats["conversions"] = dict(sorted(conversions.items()))
        stats["fingerprint"] = "{}-{:016x}-{:016x}".format(*fingerprint)

        def write(path):
            with tf.io.gfile.GFile(path, "w") as f:
                f.write(json.dumps(stats, sort_keys=True))

        _write_atomically(self._layout.stats_path, write)
        return iter(())  # The end of the graph: nothing flows on.


def _kind(entry: tuple[str, Any], kind: str) -> bool:
    return entry[0] == kind


def _is_entry(entry: tuple[str, Any]) -> bool:
    return entry[0] in (records.ITEM, records.REJECT)


def _payload(entry: tuple[str, Any]) -> Any:
    return entry[1]


def _select(pcoll, label: str, kind: str):
    """The payloads of the elements of one kind."""
    return (
        pcoll
        | f"{label}Is{kind.title()}" >> beam.Filter(_kind, kind)
        | f"{label}{kind.title()}" >> beam.Map(_payload)
    )


def _class_count_summary(kv: tuple[tuple[str, int], int]) -> dict[str, Any]:
    (split, label), count = kv
    return {"type": CLASS_COUNT, "split": split, "label": label, "count": count}


def _key(value: Any, key: int = 0) -> tuple[int, Any]:
    return key, value


def _reject_shard(reject: dict[str, Any], n: int) -> tuple[int, Any]:
    return records.stable_hash(reject["source"], reject["reason"]) % n, reject


def build(
    pipeline: beam.Pipeline,
    source: sources.Source,
    plan: sources.Plan,
    layout: Layout,
    options: images.ImageOptions,
    seed: int,
    dedup: bool,
    check_leakage: bool = True,
) -> None:
    """Adds the ExampleGen graph to `pipeline` (see the module docstring).

    Args:
      pipeline: an empty pipeline.
      source: the source, planned (its `plan()` has run).
      plan: the source's plan.
      layout: where to write.
      options: image checks and conversion.
      seed: shard placement and order.
      dedup: reject byte-identical images within a split.
      check_leakage: report byte-identical images in different splits.
    """
    units = pipeline | "Units" >> beam.Create(plan.units)
    discovered = units | "Discover" >> beam.ParDo(DiscoverFn(source))
    unit_summaries = _select(discovered, "Unit", SUMMARY)
    entries = discovered | "IsEntry" >> beam.Filter(_is_entry)
    outcomes = (
        entries
        | "Balance" >> beam.Reshuffle()
        | "Convert"
        >> beam.ParDo(ConvertFn(options, layout, seed, check_leakage))
    )
    keyed_records = _select(outcomes, "Converted", RECORD)
    convert_rejects = _select(outcomes, "Converted", records.REJECT)
    shard_keys = pipeline | "ShardKeys" >> beam.Create(
        [((split, i), None) for split, n in layout.num_shards for i in range(n)]
    )
    shards = (
        (keyed_records, shard_keys)
        | "WithEveryShard" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(layout, dedup))
    )
    shard_summaries = _select(shards, "Shard", SUMMARY)
    duplicates = _select(shards, "Shard", records.REJECT)
    class_counts = (
        _select(shards, "Shard", CLASS_COUNT)
        | "SumClassCounts" >> beam.CombinePerKey(sum)
        | "ClassCountSummary" >> beam.Map(_class_count_summary)
    )
    n_rejects = layout.num_reject_shards
    rejects_summary = (
        (
            (convert_rejects, duplicates)
            | "AllRejects" >> beam.Flatten()
            | "KeyRejects" >> beam.Map(_reject_shard, n_rejects),
            pipeline
            | "RejectShardKeys"
            >> beam.Create([(i, None) for i in range(n_rejects)]),
        )
        | "WithRejectShards" >> beam.Flatten()
        | "GroupRejects" >> beam.GroupByKey()
        | "WriteRejects" >> beam.ParDo(WriteRejectsFn(layout))
    )
    summaries = [unit_summaries, shard_summaries, class_counts]
    summaries.append(rejects_summary)
    if check_leakage:
        summaries.append(
            _select(outcomes, "Converted", DIGEST)
            | "GroupByDigest" >> beam.GroupByKey()
            | "FindLeaks" >> beam.FlatMap(_leaks)
        )
    _ = (
        tuple(summaries)
        | "AllSummaries" >> beam.Flatten()
        | "KeySummaries" >> beam.Map(_key)
        | "GroupSummaries" >> beam.GroupByKey()
        | "WriteStats" >> beam.ParDo(WriteStatsFn(layout, len(plan.classes)))
    )
