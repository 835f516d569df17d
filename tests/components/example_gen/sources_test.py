"""Tests for source planning and reading (no Beam)."""

import io
import json
import os
import random
import re
import tarfile
import urllib.parse
from unittest import mock

from absl.testing import absltest

from components.example_gen import (
    component,
    images,
    jft,
    records,
    registry,
    sources,
)
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures


def _source(**kwargs):
    config = config_lib.ExampleGenConfig(**kwargs)
    config.validate()
    return registry.make_source(config, component.resolve_inputs(config))


def _read_all(source, plan):
    return [entry for unit in plan.units for entry in source.read(unit)]


def _by_kind(entries):
    items = [e for k, e in entries if k == records.ITEM]
    rejects = [e for k, e in entries if k == records.REJECT]
    return items, rejects


class HoldoutTest(absltest.TestCase):
    def test_holdout_ignores_listing_order_and_caps_at_half(self):
        names = [f"n01_{i}.JPEG" for i in range(40)]
        chosen = sources.holdout(names, 5, 0.0)
        self.assertLen(chosen, 5)
        shuffled = list(names)
        random.Random(3).shuffle(shuffled)
        self.assertEqual(sources.holdout(shuffled, 5, 0.0), chosen)
        # At most half of a small class is held out.
        self.assertLen(sources.holdout(names[:6], 50, 0.0), 3)
        by_fraction = sources.holdout(names, 0, 0.25)
        self.assertEqual(sources.holdout(shuffled, 0, 0.25), by_fraction)
        self.assertBetween(len(by_fraction), 3, 18)

    def test_unsafe_member_names(self):
        for name in (
            "../x.jpg",
            "/etc/x.jpg",
            "a/../../x.jpg",
            "C:\\x.jpg",
            "",
        ):
            self.assertTrue(sources.is_unsafe_member(name), name)
        for name in ("n01_1.JPEG", "dir/n01_1.JPEG", "a..b.jpg"):
            self.assertFalse(sources.is_unsafe_member(name), name)


class ImageFolderTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        for cls in ("b_cls", "a_cls"):
            for i in range(3):
                fixtures.write(
                    f"{self.root}/train/{cls}/{i}.jpg", fixtures.good_jpeg(i)
                )

    def test_missing_and_empty_inputs_fail_naming_the_flag(self):
        missing = os.path.join(self.root, "nope")
        with self.assertRaisesRegex(
            ValueError, re.escape(f"--input={missing}")
        ):
            _source(source="image_folder", input=missing).plan()
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, "no class folder"):
            _source(source="image_folder", input=empty).plan()
        with self.assertRaisesRegex(ValueError, "--validation_input="):
            _source(
                source="image_folder",
                input=f"{self.root}/train",
                validation_input=missing,
            ).plan()

    def test_classes_sorted_or_from_synsets_with_missing_class(self):
        source = _source(source="image_folder", input=f"{self.root}/train")
        plan = source.plan()
        self.assertEqual([c.name for c in plan.classes], ["a_cls", "b_cls"])
        synsets = fixtures.write(f"{self.root}/syn.txt", b"b_cls\nz_cls\n")
        source = _source(
            source="image_folder",
            input=f"{self.root}/train",
            synsets=synsets,
            validation_per_class=1,
        )
        plan = source.plan()
        self.assertEqual([c.name for c in plan.classes], ["b_cls", "z_cls"])
        self.assertEqual(plan.notes["ignored_folders"], ["a_cls"])
        items, rejects = _by_kind(_read_all(source, plan))
        self.assertEqual([r["reason"] for r in rejects], [records.EMPTY_CLASS])
        self.assertLen(items, 3)
        self.assertEqual({i["labels"] for i in items}, {(0,)})
        self.assertEqual(
            sorted(i["split"] for i in items), ["train", "train", "validation"]
        )

    def test_flat_validation_with_pairs_file(self):
        val = f"{self.root}/val"
        for name in ("v1.JPEG", "v2.JPEG", "v3.JPEG", "v4.JPEG"):
            fixtures.write(f"{val}/{name}", fixtures.good_jpeg(9))
        labels = fixtures.write(
            f"{self.root}/LOC_val_solution.csv",
            b"ImageId,PredictionString\n"
            b"v1,a_cls 1 2 3 4\nv2,b_cls 5 6 7 8\nv3,q_cls 1 1 1 1\n",
        )
        source = _source(
            source="image_folder",
            input=f"{self.root}/train",
            validation_input=val,
            validation_labels=labels,
        )
        plan = source.plan()
        self.assertEqual(plan.splits, ("train", "validation"))
        entries = source.read(plan.units[-1])
        items, rejects = _by_kind(list(entries))
        self.assertEqual(
            {(i["source_id"], i["labels"]) for i in items},
            {("v1.JPEG", (0,)), ("v2.JPEG", (1,))},
        )
        self.assertEqual(
            sorted(r["reason"] for r in rejects),
            [records.NO_LABELS, records.UNKNOWN_LABEL],
        )

    def test_flat_validation_with_ordered_labels(self):
        val = f"{self.root}/val"
        for name in ("x2.JPEG", "x1.JPEG"):
            fixtures.write(f"{val}/{name}", fixtures.good_jpeg(4))
        labels = fixtures.write(f"{self.root}/ordered.txt", b"b_cls\na_cls\n")
        source = _source(
            source="image_folder",
            input=f"{self.root}/train",
            validation_input=val,
            validation_labels=labels,
        )
        plan = source.plan()
        items, _ = _by_kind(list(source.read(plan.units[-1])))
        # Sorted file order: x1 -> b_cls (1), x2 -> a_cls (0).
        self.assertEqual(
            {(i["source_id"], i["labels"]) for i in items},
            {("x1.JPEG", (1,)), ("x2.JPEG", (0,))},
        )
        short = fixtures.write(f"{self.root}/short.txt", b"b_cls\n")
        with self.assertRaisesRegex(
            ValueError, "--validation_labels=.*1 class"
        ):
            _source(
                source="image_folder",
                input=f"{self.root}/train",
                validation_input=val,
                validation_labels=short,
            ).plan()


class ImageNet21kTest(absltest.TestCase):
    def test_tar_members_unsafe_links_large_and_holdout(self):
        root = self.create_tempdir().full_path
        members = [(f"n001_{i}.JPEG", fixtures.good_jpeg(i)) for i in range(8)]
        members += [
            ("../escape.JPEG", fixtures.good_jpeg(20)),
            ("/abs/x.JPEG", fixtures.good_jpeg(21)),
            ("big.JPEG", b"\xff" * 5000),
        ]
        fixtures.write_tar(
            f"{root}/n001.tar", members, symlinks=[("link.JPEG", "n001_0.JPEG")]
        )
        synsets = fixtures.write(f"{root}/synsets.txt", b"n001\nn002\n")
        source = _source(
            source="imagenet21k",
            input=root,
            synsets=synsets,
            validation_per_class=2,
            max_file_bytes=4000,
        )
        plan = source.plan()
        self.assertEqual(plan.splits, ("train", "validation"))
        self.assertEqual(plan.notes["missing_tars"], ["n002"])
        items, rejects = _by_kind(_read_all(source, plan))
        self.assertLen(items, 8)
        self.assertEqual(
            sorted(r["reason"] for r in rejects),
            sorted(
                [
                    records.UNSAFE_PATH,
                    records.UNSAFE_PATH,
                    records.NOT_A_FILE,
                    images.FILE_TOO_LARGE,
                    records.EMPTY_CLASS,
                ]
            ),
        )
        unsafe = {r["source"] for r in rejects if r["reason"] == "unsafe_path"}
        self.assertEqual(
            unsafe,
            {f"{root}/n001.tar:../escape.JPEG", f"{root}/n001.tar:/abs/x.JPEG"},
        )
        held = {i["source_id"] for i in items if i["split"] == "validation"}
        want = sources.holdout([m for m, _ in members[:8]], 2, 0.0)
        self.assertEqual(held, {f"n001/{m}" for m in want})
        self.assertEqual(
            items[0]["data"], members[0][1]
        )  # Read, not extracted.

    def test_truncated_tar_keeps_the_members_before_the_damage(self):
        root = self.create_tempdir().full_path
        members = [(f"n001_{i}.JPEG", fixtures.good_jpeg(i)) for i in range(4)]
        path = fixtures.write_tar(f"{root}/n001.tar", members)
        with open(path, "rb") as f:
            data = f.read()
        cut = data.index(members[3][1]) + 100  # Inside the last member.
        fixtures.write(path, data[:cut])
        source = _source(
            source="imagenet21k", input=root, validation_per_class=0
        )
        plan = source.plan()
        items, rejects = _by_kind(_read_all(source, plan))
        self.assertLen(items, 3)
        # The cut member, then the rest of the tar (unknown: the file ends).
        self.assertEqual(
            [(r["source"], r["reason"]) for r in rejects],
            [
                (f"{path}:n001_3.JPEG", records.BAD_ARCHIVE),
                (path, records.DAMAGED_ARCHIVE),
            ],
        )
        self.assertEqual(rejects[1]["offset"], cut)
        self.assertIsNone(rejects[1]["members_lost"])

    def _damaged(self, damage):
        """Reads a 6-member tar after `damage(bytes, header offsets)`."""
        root = self.create_tempdir().full_path
        members = [(f"n001_{i}.JPEG", fixtures.good_jpeg(i)) for i in range(6)]
        path = fixtures.write_tar(f"{root}/n001.tar", members)
        with tarfile.open(path) as tar:
            offsets = [m.offset for m in tar]
        with open(path, "rb") as f:
            fixtures.write(path, damage(bytearray(f.read()), offsets))
        source = _source(
            source="imagenet21k", input=root, validation_per_class=0
        )
        items, rejects = _by_kind(_read_all(source, source.plan()))
        return path, offsets, items, rejects

    def test_bad_header_checksum_loses_the_rest_loudly(self):
        def bad_checksum(data, offsets):
            data[offsets[3] + 148 : offsets[3] + 154] = b"000001"
            return bytes(data)

        path, offsets, items, rejects = self._damaged(bad_checksum)
        self.assertLen(items, 3)
        self.assertLen(rejects, 1)
        self.assertEqual(rejects[0]["reason"], records.DAMAGED_ARCHIVE)
        self.assertEqual(rejects[0]["source"], path)
        self.assertEqual(rejects[0]["offset"], offsets[3])
        self.assertEqual(rejects[0]["members_lost"], 3)
        self.assertIn("checksum", rejects[0]["error"])

    def test_cut_at_a_header_boundary_is_damage(self):
        path, offsets, items, rejects = self._damaged(
            lambda data, offsets: bytes(data[: offsets[3]])
        )
        self.assertLen(items, 3)
        self.assertEqual(
            [(r["reason"], r["offset"], r["members_lost"]) for r in rejects],
            [(records.DAMAGED_ARCHIVE, offsets[3], None)],
        )
        self.assertIn("end-of-archive", rejects[0]["error"])

    def test_zeroed_header_is_damage(self):
        def zeroed(data, offsets):
            data[offsets[2] : offsets[2] + 512] = bytes(512)
            return bytes(data)

        _, offsets, items, rejects = self._damaged(zeroed)
        self.assertLen(items, 2)
        self.assertEqual(
            [(r["reason"], r["offset"], r["members_lost"]) for r in rejects],
            [(records.DAMAGED_ARCHIVE, offsets[2], 3)],
        )

    def test_latin1_member_name_is_escaped_and_read(self):
        root = self.create_tempdir().full_path
        data = fixtures.good_jpeg(1)
        with tarfile.open(
            f"{root}/n001.tar",
            "w",
            format=tarfile.GNU_FORMAT,
            encoding="latin-1",
        ) as tar:
            info = tarfile.TarInfo("caf\xe9.JPEG")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        source = _source(
            source="imagenet21k", input=root, validation_per_class=0
        )
        items, rejects = _by_kind(_read_all(source, source.plan()))
        self.assertEqual(rejects, [])
        self.assertEqual(items[0]["source_id"], "n001/caf%E9.JPEG")
        self.assertEqual(
            urllib.parse.unquote_to_bytes("caf%E9.JPEG"), b"caf\xe9.JPEG"
        )
        self.assertEqual(items[0]["data"], data)

    def test_no_tars_fails_before_reading(self):
        root = self.create_tempdir().full_path
        with self.assertRaisesRegex(
            ValueError, re.escape(f"--input={root}: holds")
        ):
            _source(source="imagenet21k", input=root).plan()


class JftTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        self.vocab = fixtures.write(
            f"{self.root}/vocab.txt", b"cat\tA cat.\ndog\n7\nbird\n"
        )

    def _rows(self):
        return [
            {
                "image": "img/a.jpg",
                "labels": ["dog", "cat"],
                "scores": [0.5, 0.9],
            },
            {"image": "img/b.jpg", "labels": [3], "id": "b-1"},
            {"image": "img/c.jpg", "labels": ["7", "2"]},  # Name "7", id 2.
            {"image": "img/d.jpg", "labels": ["fish"]},
            {"image": "img/e.jpg", "labels": []},
            {"image": "img/f.jpg", "labels": ["cat"], "scores": [0.1, 0.2]},
            {"labels": ["cat"]},
        ]

    def test_rows(self):
        manifest = fixtures.write_jsonl(f"{self.root}/m.jsonl", self._rows())
        with open(manifest, "a") as f:
            f.write("{not json\n\n")
        source = _source(source="jft", input=manifest, labels_vocab=self.vocab)
        plan = source.plan()
        self.assertTrue(plan.multi_label)
        self.assertEqual(plan.classes[0].description, "A cat.")
        items, rejects = _by_kind(_read_all(source, plan))
        got = {i["source_id"]: (i["labels"], i["scores"]) for i in items}
        self.assertEqual(
            got,
            {
                "img/a.jpg": ((0, 1), (0.9, 0.5)),
                "b-1": ((3,), None),
                "img/c.jpg": ((2,), None),
            },
        )
        self.assertEqual(items[0]["path"], f"{self.root}/img/a.jpg")
        self.assertEqual(
            sorted(r["reason"] for r in rejects),
            sorted(
                [
                    records.UNKNOWN_LABEL,
                    records.NO_LABELS,
                    records.BAD_MANIFEST_ROW,
                    records.BAD_MANIFEST_ROW,
                    records.BAD_MANIFEST_ROW,
                ]
            ),
        )

    def test_byte_ranges_read_every_row_once(self):
        rows = [{"image": f"i{i}.jpg", "labels": [i % 4]} for i in range(50)]
        manifest = fixtures.write_jsonl(f"{self.root}/m.jsonl", rows)
        with mock.patch.object(jft, "RANGE_BYTES", 37):
            source = _source(
                source="jft", input=manifest, labels_vocab=self.vocab
            )
            plan = source.plan()
        self.assertGreater(len(plan.units), 30)
        items, _ = _by_kind(_read_all(source, plan))
        self.assertEqual(
            sorted(i["source_id"] for i in items),
            sorted(r["image"] for r in rows),
        )

    def test_csv_manifest_and_empty_pattern(self):
        manifest = fixtures.write(
            f"{self.root}/m.csv",
            b"image,labels,scores\na.jpg,cat|bird,0.7|0.2\nb.jpg,dog,\n",
        )
        source = _source(source="jft", input=manifest, labels_vocab=self.vocab)
        items, rejects = _by_kind(_read_all(source, source.plan()))
        self.assertEqual(rejects, [])
        self.assertEqual(
            [(i["labels"], i["scores"]) for i in items],
            [((0, 3), (0.7, 0.2)), ((1,), None)],
        )
        pattern = f"{self.root}/none-*.jsonl"
        with self.assertRaisesRegex(
            ValueError, re.escape(f"--input={pattern}: matches no")
        ):
            _source(source="jft", input=pattern, labels_vocab=self.vocab).plan()
        json.dumps(items[0]["labels"])  # Plain data, encodable by Beam.


if __name__ == "__main__":
    absltest.main()
