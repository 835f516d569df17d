"""Tiny Model and Examples artifacts for the serving-side tests.

Models are `coatnet-tiny` at 32 px built through `artifacts.model`, the
way the Trainer writes them. The classifier can be set by hand: with a zero
kernel every image gets the same logits (the bias), which makes metrics
computable by hand; with a random kernel predictions depend on the image.
Examples are small synthetic JPEGs whose colour depends on the class.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from artifacts import examples as examples_lib
from artifacts import model as model_io
from components import base

VARIANT = "coatnet-tiny"
IMAGE_SIZE = 32


def classifier(model: tf_keras.Model):
    """The model's final Dense layer (`head.classifier` in coatnet_tf)."""
    return model.head.classifier


def build_model(
    num_classes: int,
    multi_label: bool = False,
    seed: int = 0,
    logits: Sequence[float] | None = None,
) -> tuple[tf_keras.Model, model_io.ModelSpec]:
    """A built coatnet-tiny with a chosen classifier.

    Args:
      num_classes: classes.
      multi_label: the spec's flag (sigmoid outputs).
      seed: for the random weights.
      logits: when given, a zero kernel and this bias: every image then
        gets exactly these logits. Else a random kernel (scaled so the
        probabilities are spread, not uniform).

    Returns:
      (model, spec).
    """
    tf_keras.utils.set_random_seed(seed)
    spec = model_io.ModelSpec(
        VARIANT, num_classes, IMAGE_SIZE, multi_label=multi_label
    )
    model = model_io.build_model(spec)
    dense = classifier(model)
    kernel, bias = dense.get_weights()
    if logits is not None:
        dense.set_weights(
            [np.zeros_like(kernel), np.asarray(logits, np.float32)]
        )
    else:
        rng = np.random.default_rng(seed)
        dense.set_weights(
            [
                # Logits of standard deviation ~2 from the unit-scale
                # normalized features.
                rng.normal(
                    0, 2.0 / np.sqrt(kernel.shape[0]), kernel.shape
                ).astype(np.float32),
                rng.normal(0, 0.5, bias.shape).astype(np.float32),
            ]
        )
    return model, spec


def write_model_artifact(
    uri: str,
    labels: Sequence[str],
    multi_label: bool = False,
    seed: int = 0,
    logits: Sequence[float] | None = None,
) -> tuple[base.Artifact, tf_keras.Model]:
    """Writes a Model artifact as the Trainer does; returns it and the model."""
    model, spec = build_model(len(labels), multi_label, seed, logits)
    model_io.write_model(uri, model, spec, labels)
    artifact = base.Artifact(base.MODEL, uri, {"variant": VARIANT})
    artifact.write()
    return artifact, model


def class_image(label: int, index: int, size: int = 48) -> bytes:
    """A JPEG whose hue depends on `label`, varied by `index`."""
    rng = np.random.default_rng(1000 * label + index)
    hue = np.array(
        [(label * 97) % 256, (label * 57 + 80) % 256, (label * 31 + 160) % 256]
    )
    image = hue + rng.normal(0, 20, size=(size, size + 8 * (index % 3), 3))
    return tf.io.encode_jpeg(
        np.clip(image, 0, 255).astype(np.uint8), quality=95
    ).numpy()


def example(image: bytes, labels: Sequence[int], source_id: str = "") -> bytes:
    """A serialized tf.Example in ExampleGen's format."""
    return examples_lib.jpeg_example(image, labels, source_id)


def write_examples_artifact(
    uri: str,
    splits: dict[str, Sequence[Sequence[int]]],
    labels: Sequence[str] | None,
    shards: int = 2,
) -> base.Artifact:
    """Writes `<uri>/Split-<name>/data_tfrecord-*.gz` and labels.txt.

    Args:
      uri: the artifact root.
      splits: split name -> each record's label ids (one or several).
      labels: class names for labels.txt (None: no file).
      shards: files per split, GZIP-compressed, records dealt round-robin.

    Returns:
      The written artifact.
    """
    multi = any(len(ids) != 1 for rows in splits.values() for ids in rows)
    for name, rows in splits.items():
        examples_lib.write_split(
            uri,
            name,
            (
                example(class_image(ids[0] if len(ids) else 0, i), ids)
                for i, ids in enumerate(rows)
            ),
            shards,
            examples_lib.GZIP,
        )
    if labels is not None:
        examples_lib.write_labels(uri, labels)
    artifact = base.Artifact(
        base.EXAMPLES,
        uri,
        {
            "split_names": list(splits),
            "multi_label": int(multi),
            "num_classes": len(labels) if labels else 0,
            "compression": examples_lib.GZIP,
        },
    )
    artifact.write()
    return artifact


def write_png(path: str, size: int = 40) -> str:
    """Writes a small PNG image file and returns its path."""
    rng = np.random.default_rng(size)
    image = rng.integers(0, 255, size=(size, size + 5, 3), dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())
    return path


def png_bomb(side: int = 20000) -> bytes:
    """Decompression bomb: a 1-bit grey PNG of side^2 zeros (60 KB at 20000)."""

    def chunk(kind, data):
        body = kind + data
        return (
            struct.pack(">I", len(data))
            + body
            + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        )

    row = b"\0" * (1 + (side + 7) // 8)  # Filter byte + packed bits.
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side))
    data += compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def jpeg_bomb() -> bytes:
    """Decompression bomb: an 8 x 8 JPEG whose SOF0 says 60000 x 60000."""
    small = bytearray(tf.io.encode_jpeg(np.zeros([8, 8, 3], np.uint8)).numpy())
    sof = small.index(b"\xff\xc0")
    small[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(small)


def gif_bomb() -> bytes:
    """Decompression bomb: a 1 x 1 GIF whose frame says 65535 x 65535."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)
        + b"\0\0\0\xff\xff\xff"  # Global colour table, 2 entries.
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
        + b"\x02\x02\x4c\x01\x00"  # LZW code size, one sub-block, end.
        + b"\x3b"
    )


def write_tls_files(directory: str) -> dict[str, str]:
    """A test CA and server and client certificates for localhost.

    Returns:
      Paths of "ca", "server_cert", "server_key", "client_cert",
      "client_key" (PEM).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def cert(subject, key, issuer, issuer_key, is_ca, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.BasicConstraints(ca=is_ca, path_length=None), True
            )
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(san), False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    paths = {}

    def write(label, data):
        paths[label] = os.path.join(directory, f"{label}.pem")
        with open(paths[label], "wb") as f:
            f.write(data)

    def key_pem(key):
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("test-ca", ca_key, "test-ca", ca_key, True)
    write("ca", ca.public_bytes(serialization.Encoding.PEM))
    san = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    for role, subject in (("server", "localhost"), ("client", "client")):
        key = ec.generate_private_key(ec.SECP256R1())
        issued = cert(
            subject,
            key,
            "test-ca",
            ca_key,
            False,
            san if role == "server" else None,
        )
        write(f"{role}_cert", issued.public_bytes(serialization.Encoding.PEM))
        write(f"{role}_key", key_pem(key))
    return paths
