"""A hostile corpus for each of the four sources, made at test time.

Each maker writes one input tree under `root` and returns the config
fields to read it and a table `kind -> expected outcomes`: a Counter of
`written` (stored byte for byte), `converted` (re-encoded) or a reject
reason, for the entries whose source names the kind. Every file, member,
manifest or example carries its kind's name, so each outcome in the
output can be traced back to exactly one kind.
"""

from __future__ import annotations

import collections
import io
import json
import os
import tarfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from components.example_gen import images, records
from tests.components.example_gen import fixtures

WRITTEN = "written"
CONVERTED = "converted"
MAX_FILE_BYTES = 200_000
# A PostScript program: with Ghostscript installed, Pillow's EPS plugin
# would run it. Named .jpg, as an attacker would.
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"


def _outcome(*items) -> collections.Counter:
    return collections.Counter(dict(items)) if items else collections.Counter()


def png16(seed: int) -> bytes:
    """A 16-bit grayscale PNG (Pillow mode I;16)."""
    pixels = (fixtures.photo_like(24, 32, seed)[..., 0].astype(np.uint16)) * 257
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def palette_gif(seed: int) -> bytes:
    return fixtures.encode(fixtures.photo_like(20, 20, seed), "GIF", mode="P")


def big_file(seed: int) -> bytes:
    """A valid JPEG padded past MAX_FILE_BYTES (bytes after EOI)."""
    return fixtures.good_jpeg(seed) + bytes(MAX_FILE_BYTES)


def image_folder(root: str) -> tuple[dict, dict[str, collections.Counter]]:
    """`root/train/<class>/*` and a validation tree, every bad kind."""
    train, val = f"{root}/train", f"{root}/val"
    files = {
        "if_good": (fixtures.good_jpeg(1), _outcome((WRITTEN, 1))),
        "if_cmyk": (fixtures.cmyk_jpeg(2), _outcome((CONVERTED, 1))),
        "if_gray": (fixtures.grayscale_jpeg(3), _outcome((CONVERTED, 1))),
        "if_alpha": (fixtures.png_with_alpha(4), _outcome((CONVERTED, 1))),
        "if_png16": (png16(5), _outcome((CONVERTED, 1))),
        "if_palette": (palette_gif(6), _outcome((CONVERTED, 1))),
        "if_corrupt": (
            fixtures.corrupt_jpeg(7),
            _outcome((images.DECODE_ERROR, 1)),
        ),
        "if_truncated": (
            fixtures.truncated_jpeg(8),
            _outcome((images.TRUNCATED, 1)),
        ),
        "if_zero": (b"", _outcome((images.EMPTY_FILE, 1))),
        "if_text": (
            fixtures.not_an_image(),
            _outcome((images.NOT_AN_IMAGE, 1)),
        ),
        "if_bomb": (
            fixtures.huge_png_header(),
            _outcome((images.TOO_MANY_PIXELS, 1)),
        ),
        "if_postscript": (
            POSTSCRIPT,
            _outcome((images.FORMAT_NOT_ALLOWED, 1)),
        ),
        "if_too_big": (big_file(9), _outcome((images.FILE_TOO_LARGE, 1))),
        # Same bytes as if_good: the larger source id is the duplicate.
        "if_zz_duplicate": (
            fixtures.good_jpeg(1),
            _outcome((records.DUPLICATE, 1)),
        ),
        # Same bytes as if_leak_val in the validation split.
        "if_leak_train": (fixtures.good_jpeg(11), _outcome((WRITTEN, 1))),
    }
    expected = {}
    for kind, (data, outcome) in files.items():
        fixtures.write(f"{train}/n01/{kind}.jpg", data)
        expected[kind] = outcome
    # A Latin-1 file name, which tf.io.gfile cannot even list.
    os.makedirs(f"{train}/n02")
    with open(
        os.fsencode(f"{train}/n02/") + b"if_latin1.caf\xe9.jpg", "wb"
    ) as f:
        f.write(fixtures.good_jpeg(12))
    expected["if_latin1"] = _outcome((WRITTEN, 1))
    # A FIFO would block a reader forever; a dangling link reads nothing.
    os.mkfifo(f"{train}/n02/if_fifo.jpg")
    expected["if_fifo"] = _outcome((records.NOT_A_FILE, 1))
    os.symlink(f"{root}/nowhere.jpg", f"{train}/n02/if_dangling.jpg")
    expected["if_dangling"] = _outcome((records.MISSING_FILE, 1))
    os.makedirs(f"{train}/if_empty_class")
    expected["if_empty_class"] = _outcome((records.EMPTY_CLASS, 2))
    fixtures.write(f"{val}/n01/if_leak_val.jpg", fixtures.good_jpeg(11))
    expected["if_leak_val"] = _outcome((WRITTEN, 1))
    fixtures.write(f"{val}/n02/if_val_good.jpg", fixtures.good_jpeg(13))
    expected["if_val_good"] = _outcome((WRITTEN, 1))
    config = {"input": train, "validation_input": val}
    return config, expected


def _tar_bytes(members, **kwargs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", **kwargs) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _six(kind: str, seed: int) -> tuple[bytes, list[int]]:
    """A 6-member tar of distinct images and its header offsets."""
    data = _tar_bytes(
        (f"{kind}.m{i}.JPEG", fixtures.good_jpeg(seed + i)) for i in range(6)
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return data, [m.offset for m in tar]


def imagenet21k(root: str) -> tuple[dict, dict[str, collections.Counter]]:
    """One tar per kind: sound, damaged in every way, odd members."""
    tars, expected = {}, {}
    tars["tar_good"] = _tar_bytes([("tar_good.JPEG", fixtures.good_jpeg(20))])
    expected["tar_good"] = _outcome((WRITTEN, 1))
    tars["tar_latin1"] = _tar_bytes(
        [("tar_latin1.caf\xe9.JPEG", fixtures.good_jpeg(21))],
        format=tarfile.GNU_FORMAT,
        encoding="latin-1",
    )
    expected["tar_latin1"] = _outcome((WRITTEN, 1))
    data, offsets = _six("tar_bad_checksum", 100)
    bad = bytearray(data)
    bad[offsets[3] + 148 : offsets[3] + 154] = b"000001"
    tars["tar_bad_checksum"] = bytes(bad)
    expected["tar_bad_checksum"] = _outcome(
        (WRITTEN, 3), (records.DAMAGED_ARCHIVE, 1)
    )
    data, offsets = _six("tar_cut_at_header", 110)
    tars["tar_cut_at_header"] = data[: offsets[3]]
    expected["tar_cut_at_header"] = _outcome(
        (WRITTEN, 3), (records.DAMAGED_ARCHIVE, 1)
    )
    data, offsets = _six("tar_cut_in_data", 120)
    tars["tar_cut_in_data"] = data[: offsets[3] + 700]
    expected["tar_cut_in_data"] = _outcome(
        (WRITTEN, 3), (records.BAD_ARCHIVE, 1), (records.DAMAGED_ARCHIVE, 1)
    )
    data, offsets = _six("tar_zeroed_header", 130)
    zeroed = bytearray(data)
    zeroed[offsets[2] : offsets[2] + 512] = bytes(512)
    tars["tar_zeroed_header"] = bytes(zeroed)
    expected["tar_zeroed_header"] = _outcome(
        (WRITTEN, 2), (records.DAMAGED_ARCHIVE, 1)
    )
    data, offsets = _six("tar_no_end_blocks", 140)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    tars["tar_no_end_blocks"] = data[
        : last.offset_data + 512 * (-(-last.size // 512))
    ]
    expected["tar_no_end_blocks"] = _outcome(
        (WRITTEN, 6), (records.DAMAGED_ARCHIVE, 1)
    )
    tars["tar_junk"] = b"this is not a tar archive\n" * 100
    expected["tar_junk"] = _outcome((records.DAMAGED_ARCHIVE, 1))
    tars["tar_empty_file"] = b""
    expected["tar_empty_file"] = _outcome((records.DAMAGED_ARCHIVE, 1))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("../tar_dotdot.JPEG", "/abs/tar_absolute.JPEG"):
            info = tarfile.TarInfo(name)
            payload = fixtures.good_jpeg(22)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo("tar_symlink.JPEG")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    tars["tar_members"] = buf.getvalue()
    expected["tar_dotdot"] = _outcome((records.UNSAFE_PATH, 1))
    expected["tar_absolute"] = _outcome((records.UNSAFE_PATH, 1))
    expected["tar_symlink"] = _outcome((records.NOT_A_FILE, 1))
    tars["tar_odd"] = _tar_bytes(
        [
            ("tar_corrupt_member.JPEG", fixtures.corrupt_jpeg(23)),
            ("tar_huge_member.JPEG", big_file(24)),
            ("tar_png16_member.png", png16(25)),
            ("tar_postscript_member.jpg", POSTSCRIPT),
        ]
    )
    expected["tar_corrupt_member"] = _outcome((images.DECODE_ERROR, 1))
    expected["tar_huge_member"] = _outcome((images.FILE_TOO_LARGE, 1))
    expected["tar_png16_member"] = _outcome((CONVERTED, 1))
    expected["tar_postscript_member"] = _outcome((images.FORMAT_NOT_ALLOWED, 1))
    for name, data in tars.items():
        fixtures.write(f"{root}/tars/{name}.tar", data)
    return {"input": f"{root}/tars"}, expected


def _deep_json(depth: int) -> str:
    return '{"image": "x.jpg", "labels": ' + "[" * depth + "]" * depth + "}"


def jft(root: str) -> tuple[dict, dict[str, collections.Counter]]:
    """One manifest per kind, images under `root/images` (the root)."""
    images_dir, outside = f"{root}/images", f"{root}/outside"
    rows: dict[str, bytes] = {}
    expected: dict[str, collections.Counter] = {}

    def row(kind, outcome, **fields):
        rows[kind] = (json.dumps(fields) + "\n").encode()
        expected[kind] = outcome

    def image(kind, data):
        fixtures.write(f"{images_dir}/{kind}.jpg", data)
        return f"{kind}.jpg"

    row(
        "jft_good",
        _outcome((WRITTEN, 1)),
        image=image("jft_good", fixtures.good_jpeg(30)),
        labels=["cat", "dog"],
        scores=[0.9, 0.4],
    )
    row(
        "jft_superscript_label",
        _outcome((records.UNKNOWN_LABEL, 1)),
        image=image("jft_superscript_label", fixtures.good_jpeg(31)),
        labels=["\u00b2"],
    )
    row(
        "jft_bool_label",
        _outcome((records.UNKNOWN_LABEL, 1)),
        image=image("jft_bool_label", fixtures.good_jpeg(32)),
        labels=[True],
    )
    for kind, score in (("jft_nan_score", "NaN"), ("jft_inf_score", "1e999")):
        rows[kind] = (
            json.dumps({"image": image(kind, fixtures.good_jpeg(33))})[:-1]
            + f', "labels": ["cat"], "scores": [{score}]}}\n'
        ).encode()
        expected[kind] = _outcome((records.BAD_SCORE, 1))
    rows["jft_deep_json"] = (_deep_json(200_000) + "\n").encode()
    expected["jft_deep_json"] = _outcome((records.BAD_MANIFEST_ROW, 1))
    rows["jft_not_utf8"] = b'{"image": "a\xff.jpg", "labels": ["cat"]}\n'
    expected["jft_not_utf8"] = _outcome((records.BAD_MANIFEST_ROW, 1))
    rows["jft_lone_surrogate"] = b'{"image": "a\\udce9.jpg", "labels": [0]}\n'
    expected["jft_lone_surrogate"] = _outcome((records.BAD_MANIFEST_ROW, 1))
    rows["jft_not_an_object"] = b'["a.jpg", "cat"]\n'
    expected["jft_not_an_object"] = _outcome((records.BAD_MANIFEST_ROW, 1))
    rows["jft_broken_json"] = b'{"image": "a.jpg", "labels": [\n'
    expected["jft_broken_json"] = _outcome((records.BAD_MANIFEST_ROW, 1))
    row(
        "jft_score_count",
        _outcome((records.BAD_MANIFEST_ROW, 1)),
        image="jft_score_count.jpg",
        labels=["cat"],
        scores=[0.1, 0.2],
    )
    row(
        "jft_no_labels",
        _outcome((records.NO_LABELS, 1)),
        image=image("jft_no_labels", fixtures.good_jpeg(34)),
        labels=[],
    )
    for kind, uri in (
        ("jft_http", "http://example.com/jft_http.jpg"),
        ("jft_s3", "s3://bucket/jft_s3.jpg"),
    ):
        row(
            kind,
            _outcome((records.UNSUPPORTED_SCHEME, 1)),
            image=uri,
            labels=[0],
        )
    # Files that exist outside the image root: rejected, never read.
    fixtures.write(f"{outside}/secret.jpg", fixtures.good_jpeg(35))
    for kind, path in (
        ("jft_dotdot", "../outside/secret.jpg"),
        ("jft_absolute", f"{outside}/secret.jpg"),
        ("jft_etc", "/etc/hostname"),
        ("jft_other_bucket", "gs://another-bucket/secret.jpg"),
    ):
        row(
            kind,
            _outcome((records.OUTSIDE_IMAGE_ROOT, 1)),
            image=path,
            labels=[0],
        )
    row(
        "jft_missing",
        _outcome((records.MISSING_FILE, 1)),
        image="jft_missing.jpg",
        labels=[0],
    )
    os.makedirs(f"{images_dir}/jft_directory.jpg")
    row(
        "jft_directory",
        _outcome((records.NOT_A_FILE, 1)),
        image="jft_directory.jpg",
        labels=[0],
    )
    row(
        "jft_postscript",
        _outcome((images.FORMAT_NOT_ALLOWED, 1)),
        image=image("jft_postscript", POSTSCRIPT),
        labels=[1],
    )
    row(
        "jft_leak_train",
        _outcome((WRITTEN, 1)),
        image=image("jft_leak_train", fixtures.good_jpeg(36)),
        labels=[1],
    )
    for kind, data in rows.items():
        fixtures.write(f"{root}/m/{kind}.jsonl", data)
    long_field = "x" * 200_000
    fixtures.write(
        f"{root}/m/jft_csv_long_field.csv",
        f"image,labels\njft_csv_long_field.jpg,{long_field}\n".encode(),
    )
    expected["jft_csv_long_field"] = _outcome((records.BAD_MANIFEST_ROW, 1))
    fixtures.write(
        f"{root}/m/jft_csv_good.csv",
        b"image,labels,scores\n"
        + image("jft_csv_good", fixtures.good_jpeg(37)).encode()
        + b",cat|2,0.5|0.25\n",
    )
    expected["jft_csv_good"] = _outcome((WRITTEN, 1))
    fixtures.write_jsonl(
        f"{root}/v/jft_leak_val.jsonl",
        [
            {
                "image": image("jft_leak_val", fixtures.good_jpeg(36)),
                "labels": [1],
            }
        ],
    )
    expected["jft_leak_val"] = _outcome((WRITTEN, 1))
    vocab = fixtures.write(f"{root}/vocab.txt", b"cat\ndog\nowl\n")
    config = {
        "input": f"{root}/m/*",
        "validation_input": f"{root}/v/*.jsonl",
        "labels_vocab": vocab,
        "image_root": images_dir,
    }
    return config, expected


def _example(image: bytes, label: int, file_name: bytes) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "file_name": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[file_name])
        ),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def tfds_dataset(
    root: str,
) -> tuple[dict, dict[str, collections.Counter], dict]:
    """A prepared TFDS dataset with bad examples and a cut record file.

    Returns:
      The config fields, the expected outcomes, and `tfds_id -> kind` for
      the rejects (whose source is the TFDS id, not the file name).
    """
    good = fixtures.encode(fixtures.photo_like(20, 24, 40), "PNG")
    shard0 = [
        ("tfds_good", good, 0, _outcome((CONVERTED, 1))),
        (
            "tfds_corrupt_image",
            fixtures.corrupt_jpeg(41),
            1,
            _outcome((images.DECODE_ERROR, 1)),
        ),
        ("tfds_no_label", good, -1, _outcome((records.NO_LABELS, 1))),
        (
            "tfds_label_out_of_range",
            fixtures.good_jpeg(42),
            7,
            _outcome((records.UNKNOWN_LABEL, 1)),
        ),
        (
            "tfds_latin1.caf\xe9",
            fixtures.good_jpeg(43),
            2,
            _outcome((WRITTEN, 1)),
        ),
        (
            "tfds_postscript",
            POSTSCRIPT,
            0,
            _outcome((images.FORMAT_NOT_ALLOWED, 1)),
        ),
        ("tfds_png16", png16(44), 1, _outcome((CONVERTED, 1))),
    ]
    shard1 = [
        ("tfds_good_second", fixtures.good_jpeg(45), 1, _outcome((WRITTEN, 1))),
        (
            "tfds_cut_record",
            fixtures.good_jpeg(46),
            2,
            _outcome((records.DAMAGED_ARCHIVE, 1)),
        ),
    ]
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["cat", "dog", "owl"]),
            "file_name": tfds.features.Text(),
        }
    )
    out = os.path.join(root, "hostile_tfds", "1.0.0")
    tf.io.gfile.makedirs(out)
    expected, by_id, paths = {}, {}, []
    for shard, rows in enumerate((shard0, shard1)):
        name = f"hostile_tfds-train.tfrecord-{shard:05d}-of-00002"
        paths.append(os.path.join(out, name))
        with tf.io.TFRecordWriter(paths[-1]) as writer:
            for i, (kind, data, label, outcome) in enumerate(rows):
                raw_name = kind.encode("latin-1")
                writer.write(_example(data, label, raw_name))
                kind = kind.split(".")[0]
                expected[kind] = outcome
                by_id[f"{name}__{i}"] = kind
    tfds.folder_dataset.write_metadata(
        data_dir=out,
        features=features,
        split_infos=None,  # Computed from the files (before the cut).
        filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    )
    with open(paths[1], "rb") as f:
        data = f.read()
    fixtures.write(paths[1], data[:-20])  # Inside the last record.
    return {"input": out}, expected, by_id
