r"""Classify images with a served model from the command line.

  bazel run //serving:client -- --server=localhost:8500 --model=coatnet \
    cat.jpg dog.png [--format=json] [--top_k=3]

Prints, per image, the top-k labels and scores as a table (default) or
JSON. `--metadata` prints the served signatures instead, `--status` the
version states. TLS: --root_certificates (and --client_certificate,
--client_key for mutual TLS).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from absl import app, flags

from artifacts import core
from serving import client as client_lib

_SERVER = flags.DEFINE_string("server", "localhost:8500", "HOST:PORT.")
_MODEL = flags.DEFINE_string("model", "coatnet", "Model name.")
_SIGNATURE = flags.DEFINE_string(
    "signature", client_lib.DEFAULT_SIGNATURE, "Image-bytes signature."
)
_VERSION = flags.DEFINE_integer("version", None, "Model version.")
_LABEL = flags.DEFINE_string("version_label", "", "Version label.")
_TOP_K = flags.DEFINE_integer(
    "top_k", 5, "Rows per image (at most what the model returns)."
)
_FORMAT = flags.DEFINE_enum("format", "table", ["table", "json"], "Output.")
_TIMEOUT = flags.DEFINE_float("timeout", 30.0, "Deadline per attempt (s).")
_RETRIES = flags.DEFINE_integer("retries", 4, "Retries on UNAVAILABLE.")
_MAX_MB = flags.DEFINE_integer("max_message_mb", 256, "gRPC message limit.")
_ROOTS = flags.DEFINE_string("root_certificates", "", "TLS CA bundle (PEM).")
_CERT = flags.DEFINE_string("client_certificate", "", "mTLS cert (PEM).")
_KEY = flags.DEFINE_string("client_key", "", "mTLS key (PEM).")
_TLS = flags.DEFINE_bool("tls", False, "TLS with the system's CA roots.")
_NAME = flags.DEFINE_string("server_name_override", "", "TLS server name.")
_METADATA = flags.DEFINE_bool("metadata", False, "Print the signatures.")
_STATUS = flags.DEFINE_bool("status", False, "Print the version states.")


def make_client() -> client_lib.ServingClient:
    """A client configured from the flags."""
    tls = None
    if _TLS.value or _ROOTS.value or _CERT.value:
        tls = client_lib.TlsOptions(
            root_certificates=_resolve(_ROOTS.value),
            client_certificate=_resolve(_CERT.value),
            client_key=_resolve(_KEY.value),
            server_name_override=_NAME.value,
        )
    return client_lib.ServingClient(
        _SERVER.value,
        _MODEL.value,
        version=_VERSION.value,
        version_label=_LABEL.value,
        timeout=_TIMEOUT.value,
        retries=_RETRIES.value,
        max_message_bytes=_MAX_MB.value << 20,
        tls=tls,
    )


def run(images: Sequence[str], out: TextIO = sys.stdout) -> int:
    """Does what the flags say; returns the exit code."""
    with make_client() as client:
        if _METADATA.value:
            print(json.dumps(client.get_model_metadata(), indent=1), file=out)
            return 0
        if _STATUS.value:
            print(json.dumps(client.get_model_status(), indent=1), file=out)
            return 0
        if not images:
            raise app.UsageError("Name at least one image file.")
        paths = [core.resolve_user_path(p) for p in images]
        predictions = client.predict_images(paths, _SIGNATURE.value)
    for p in predictions:
        del p.top_k[_TOP_K.value :]
    if _FORMAT.value == "json":
        result = [
            {
                "image": path,
                "top_k": [
                    {"label": label, "score": score, "id": cid}
                    for label, score, cid in p.top_k
                ],
            }
            for path, p in zip(images, predictions)
        ]
        print(json.dumps(result, indent=1), file=out)
    else:
        print(client_lib.format_table(images, predictions), file=out)
    return 0


def _resolve(path: str) -> str:
    return core.resolve_user_path(path) if path else ""


def main(argv):
    try:
        return run(argv[1:])
    except client_lib.ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    app.run(main)
