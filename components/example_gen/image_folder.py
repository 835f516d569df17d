"""`image_folder` source: `<root>/<class>/*` images.

This is ImageNet-1K's training set after extraction (one folder per
synset) or any user data laid out by class. The validation split comes
from, in this order of preference:

1. `--validation_input` holding the same `<class>/*` tree;
2. `--validation_input` as a flat folder plus `--validation_labels`, a
   file giving each image's class: `<file> <class>` lines (CSV, TSV or
   spaces; Kaggle's `LOC_val_solution.csv` works, a header line is
   skipped), or one class per line in sorted file-name order (TFDS's
   `imagenet2012_validation_labels.txt`);
3. a hold-out of the training folders by a stable hash of the file name
   (`--validation_per_class` / `--validation_fraction`).

Class folders are listed inside the workers (one unit per class), so the
driver never lists a million files; the flat validation folder is listed
by the driver, which must match it with the labels file anyway.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from components.example_gen import config as config_lib
from components.example_gen import records, sources


def _parse_label_line(line: str) -> tuple[str, str] | None:
    """`file<sep>class...` -> (file, class); None for a one-field line."""
    for sep in (",", "\t", " "):
        if sep in line:
            name, _, rest = line.partition(sep)
            label = rest.strip().split(" ")[0].split(",")[0].strip()
            return name.strip(), label
    return None


class ImageFolderSource(sources.Source):
    """Class folders of images (see the module docstring)."""

    def plan(self) -> sources.Plan:
        config = self.config
        root = sources.require_dir(self.resolved.input.pattern, "input")
        found = dict(sources.list_subdirs(root))
        if config.synsets:
            names = sources.read_class_list(config.synsets, "synsets")
        else:
            names = sorted(found)
        if not names:
            raise ValueError(f"--input={root}: holds no class folder.")
        descriptions = sources.read_descriptions(
            config.class_descriptions, "class_descriptions"
        )
        present = found
        holdout = not config.validation_input and config.holds_out_validation
        units = [
            self._class_unit(config_lib.TRAIN, root, name, i, present, holdout)
            for i, name in enumerate(names)
        ]
        splits = [config_lib.TRAIN]
        notes: dict[str, Any] = {
            "ignored_folders": sorted(set(present) - set(names)),
        }
        inputs = {"input": root}
        if config.validation_input:
            val_root = self.resolved.validation_input.pattern
            sources.require_dir(val_root, "validation_input")
            inputs["validation_input"] = val_root
            if config.validation_labels:
                units.append(self._flat_unit(val_root, names, notes))
                inputs["validation_labels"] = config.validation_labels
            else:
                val_present = dict(sources.list_subdirs(val_root))
                if not set(val_present) & set(names):
                    raise ValueError(
                        f"--validation_input={val_root}: no class folder of "
                        "the training classes; for a flat folder of images "
                        "give --validation_labels."
                    )
                units += [
                    self._class_unit(
                        config_lib.VALIDATION, val_root, name, i, val_present
                    )
                    for i, name in enumerate(names)
                ]
            splits.append(config_lib.VALIDATION)
        elif holdout:
            splits.append(config_lib.VALIDATION)
        return sources.Plan(
            classes=sources.make_classes(names, descriptions),
            splits=tuple(splits),
            units=units,
            inputs=inputs,
            notes=notes,
        )

    @staticmethod
    def _class_unit(split, root, name, index, present, holdout=False):
        return {
            "id": f"{split}/{name}",
            "kind": "class_dir",
            "split": split,
            "name": name,
            "label": index,
            "dir": present.get(name),
            "missing_where": posixpath.join(root, name),
            "holdout": holdout,
        }

    def _flat_unit(self, val_root, names, notes) -> dict[str, Any]:
        """Lists the flat validation folder and matches it with labels."""
        path = self.config.validation_labels
        lines = sources.read_text_lines(path, "validation_labels")
        pairs = sources.list_files(val_root)
        files = [rel for rel, _ in pairs]
        if not files:
            raise ValueError(f"--validation_input={val_root}: holds no file.")
        index = {name: i for i, name in enumerate(names)}
        parsed = [_parse_label_line(line) for line in lines]
        if all(p is None for p in parsed):
            # One class per line, in sorted file-name order (TFDS's file).
            if len(lines) != len(files):
                raise ValueError(
                    f"--validation_labels={path} lists {len(lines)} classes "
                    f"in file order, but --validation_input={val_root} holds "
                    f"{len(files)} files: a missing or extra file would "
                    "shift every later label, so nothing is read. Match the "
                    "folder to the file, or use <file> <class> lines."
                )
            notes["validation_labels_checked"] = "by count, in file order"
            by_file = dict(zip(files, lines))
        else:
            if parsed[0] is not None and parsed[0][1] not in index:
                parsed = parsed[1:]  # A header line such as ImageId,...
            by_file = {}
            for p in parsed:
                if p is None:
                    raise ValueError(
                        f"--validation_labels={path}: mixes one-field lines "
                        "with <file> <class> lines."
                    )
                by_file[p[0]] = p[1]
        entries = []
        matched = 0
        for rel, full in pairs:
            stem = posixpath.splitext(posixpath.basename(rel))[0]
            label = by_file.get(rel, by_file.get(posixpath.basename(rel)))
            if label is None:
                label = by_file.get(stem)
            matched += label is not None
            entries.append((rel, full, label, index.get(label, -1)))
        notes["validation_labels_unmatched"] = len(by_file) - matched
        return {
            "id": "validation/<flat>",
            "kind": "flat_dir",
            "split": config_lib.VALIDATION,
            "dir": val_root,
            "entries": entries,
        }

    def read(self, unit: dict[str, Any]) -> Iterator[sources.Entry]:
        split = unit["split"]
        if unit["kind"] == "flat_dir":
            yield from self._read_flat(unit)
            return
        directory = unit["dir"]
        try:
            pairs = sources.list_files(directory) if directory else []
        except OSError as e:
            yield (
                records.REJECT,
                records.make_reject(
                    split,
                    unit["missing_where"],
                    records.UNREADABLE_FILE,
                    f"cannot list the class folder: {e}",
                ),
            )
            return
        files = [rel for rel, _ in pairs]
        if not files:
            where = unit["missing_where"]
            yield (
                records.REJECT,
                records.make_reject(
                    split,
                    where,
                    records.EMPTY_CLASS,
                    f"class {unit['name']!r} has no images"
                    + ("" if directory else " (no such folder)"),
                ),
            )
            return
        held_out = set()
        if unit["holdout"]:
            held_out = sources.holdout(
                files,
                self.config.validation_per_class,
                self.config.validation_fraction,
            )
        for rel, path in pairs:
            where = posixpath.join(unit["missing_where"], rel)
            yield (
                records.ITEM,
                records.make_item(
                    split=config_lib.VALIDATION if rel in held_out else split,
                    source=where,
                    source_id=f"{unit['name']}/{rel}",
                    labels=[unit["label"]],
                    path=path,
                ),
            )

    def _read_flat(self, unit: dict[str, Any]) -> Iterator[sources.Entry]:
        split, root = unit["split"], unit["dir"]
        for rel, full, label_name, label in unit["entries"]:
            path = posixpath.join(root, rel)
            if label_name is None:
                yield (
                    records.REJECT,
                    records.make_reject(
                        split,
                        path,
                        records.NO_LABELS,
                        f"{rel} is not in --validation_labels",
                    ),
                )
            elif label < 0:
                yield (
                    records.REJECT,
                    records.make_reject(
                        split,
                        path,
                        records.UNKNOWN_LABEL,
                        f"class {label_name!r} is not one of the classes",
                    ),
                )
            else:
                yield (
                    records.ITEM,
                    records.make_item(split, path, rel, [label], path=full),
                )
