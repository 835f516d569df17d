"""`imagenet21k` source: a folder of per-synset tars (`nXXXXXXXX.tar`).

This is the raw fall11 or winter21 release with the outer archive
unpacked: one tar per synset holding `nXXXXXXXX_<id>.JPEG` files. The tars
are read straight from their storage (`tf.io.gfile`, so gs:// works) and
never extracted to disk.

- Classes: the synsets of `--synsets` in file order (e.g. fall11's 21,841
  list, to keep class indices of a checkpoint while reading winter21), or
  the sorted tar names. A listed synset without a tar is an empty class.
- Validation: held out per class by a stable hash of the member's file
  name (`--validation_per_class`, default 50 as in ImageNet-21K-P, or
  `--validation_fraction`), never by listing order.
- Members with an absolute path or a `..` component, links, devices and
  other non-files are rejected with a reason. Member names that are not
  UTF-8 (Latin-1 in old tars) are escaped (`sources.escape_name`).
- Damage `tarfile` passes over in silence (a bad header checksum, a file
  cut at a header boundary, missing end-of-archive blocks) is found by
  `tar_check`: the members before it are kept, and the rest becomes one
  `damaged_archive` reject with the offset and the members lost.

One unit per tar; a tar is opened in random-access mode, so its headers
are read first (the member names decide the hold-out), then the members.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from components.example_gen import config as config_lib
from components.example_gen import images, records, sources, tar_check

TAR_SUFFIX = ".tar"
# What a damaged tar raises (tf.io.gfile raises OutOfRangeError when a
# header promises more data than the file has; tarfile raises ValueError
# and friends on some malformed fields). Other I/O errors are left to
# propagate, so that the runner retries transient storage failures.
_DAMAGE = (
    tarfile.TarError,
    EOFError,
    ValueError,
    UnicodeError,
    OverflowError,
    tf.errors.OutOfRangeError,
    tf.errors.DataLossError,
)


class ImageNet21kSource(sources.Source):
    """Per-synset tars (see the module docstring)."""

    def plan(self) -> sources.Plan:
        config = self.config
        root = sources.require_dir(self.resolved.input.pattern, "input")
        tars = {
            posixpath.basename(p)[: -len(TAR_SUFFIX)]: p
            for p in tf.io.gfile.glob(posixpath.join(root, "*" + TAR_SUFFIX))
        }
        if config.synsets:
            names = sources.read_class_list(config.synsets, "synsets")
        else:
            names = sorted(tars)
        if not names:
            raise ValueError(f"--input={root}: holds no *{TAR_SUFFIX} file.")
        if not set(names) & set(tars):
            raise ValueError(
                f"--input={root}: none of the {len(names)} synsets of "
                f"--synsets={config.synsets} has a tar there."
            )
        descriptions = sources.read_descriptions(
            config.class_descriptions, "class_descriptions"
        )
        units = [
            {
                "id": name,
                "name": name,
                "label": i,
                "tar": tars.get(name),
                "missing_where": posixpath.join(root, name + TAR_SUFFIX),
            }
            for i, name in enumerate(names)
        ]
        splits = (config_lib.TRAIN,)
        if config.holds_out_validation:
            splits += (config_lib.VALIDATION,)
        return sources.Plan(
            classes=sources.make_classes(names, descriptions),
            splits=splits,
            units=units,
            inputs={"input": root},
            notes={
                "ignored_tars": sorted(set(tars) - set(names)),
                "missing_tars": sorted(set(names) - set(tars)),
            },
        )

    def read(self, unit: dict[str, Any]) -> Iterator[sources.Entry]:
        train = config_lib.TRAIN
        if unit["tar"] is None:
            yield (
                records.REJECT,
                records.make_reject(
                    train,
                    unit["missing_where"],
                    records.EMPTY_CLASS,
                    f"synset {unit['name']} has no tar",
                ),
            )
            return
        path = unit["tar"]
        size = tf.io.gfile.stat(path).length
        with tf.io.gfile.GFile(path, "rb") as f:
            try:
                tar = tarfile.open(fileobj=f, mode="r:")
            except _DAMAGE as e:
                # Nothing readable from the first header on; count what
                # the rest still holds.
                lost = tar_check.count_members_after(f, tar_check.BLOCK, size)
                first_bad = size > 0
                damage = tar_check.Damage(
                    0, f"cannot open: {e}", lost + first_bad
                )
                yield damaged(train, path, damage)
                return
            with tar:
                yield from self._read_members(unit, path, tar, f, size)

    def _read_members(
        self,
        unit: dict[str, Any],
        path: str,
        tar: tarfile.TarFile,
        f: Any,
        size: int,
    ) -> Iterator[sources.Entry]:
        train = config_lib.TRAIN
        members, damage, end = [], None, 0
        try:
            for member in tar:  # Reads the headers, seeking past the data.
                members.append(member)
                end = max(end, tar_check.member_end(member))
        except _DAMAGE as e:
            if end >= size:  # Cut inside the last member's data.
                damage = tar_check.check(f, size, end)
            else:
                damage = tar_check.Damage(
                    end,
                    f"unreadable after {len(members)} members: {e}",
                    1
                    + tar_check.count_members_after(
                        f, end + tar_check.BLOCK, size
                    ),
                )
        if damage is None:
            # tarfile ends quietly at a bad header: look for ourselves.
            damage = tar_check.check(f, size, end)
        files = []
        for member in members:
            name = sources.escape_name(member.name)
            where = f"{path}:{name}"
            if member.isdir():
                continue  # Not an entry.
            if sources.is_unsafe_member(name):
                yield (
                    records.REJECT,
                    records.make_reject(
                        train,
                        where,
                        records.UNSAFE_PATH,
                        "absolute path or '..' component in the member name",
                    ),
                )
            elif not member.isfile():
                yield (
                    records.REJECT,
                    records.make_reject(
                        train,
                        where,
                        records.NOT_A_FILE,
                        f"tar member of type {member.type!r} (a link, ...)",
                    ),
                )
            elif member.size > self.config.max_file_bytes:
                yield (
                    records.REJECT,
                    records.make_reject(
                        train,
                        where,
                        images.FILE_TOO_LARGE,
                        f"{member.size} bytes > max_file_bytes="
                        f"{self.config.max_file_bytes}",
                    ),
                )
            else:
                files.append((name, member))
        held_out = set()
        if self.config.holds_out_validation:
            held_out = sources.holdout(
                [posixpath.basename(name) for name, _ in files],
                self.config.validation_per_class,
                self.config.validation_fraction,
            )
        for name, member in files:
            base = posixpath.basename(name)
            split = config_lib.VALIDATION if base in held_out else train
            where = f"{path}:{name}"
            try:
                data = tar.extractfile(member).read()
            except _DAMAGE as e:
                yield (
                    records.REJECT,
                    records.make_reject(
                        split, where, records.BAD_ARCHIVE, f"unreadable: {e}"
                    ),
                )
                continue
            yield (
                records.ITEM,
                records.make_item(
                    split=split,
                    source=where,
                    source_id=f"{unit['name']}/{name}",
                    labels=[unit["label"]],
                    data=data,
                ),
            )
        if damage:
            yield damaged(train, path, damage)


def damaged(split: str, path: str, damage: tar_check.Damage) -> sources.Entry:
    """The reject standing for the unread rest of a damaged archive.

    It is not a discovered entry but the record of what could not be
    discovered: the pipeline counts it as lost (see beam_pipeline.py).

    Args:
      split: the split to file it under.
      path: the archive.
      damage: where and how it is damaged.

    Returns:
      A `(REJECT, reject)` entry with `offset` and `members_lost`.
    """
    reject = records.make_reject(
        split, path, records.DAMAGED_ARCHIVE, damage.problem
    )
    reject.update(offset=damage.offset, members_lost=damage.members_lost)
    return records.REJECT, reject
