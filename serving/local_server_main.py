r"""CLI of the local TF Serving stand-in (see local_server.py).

  bazel run //serving:local_server -- --port=8500 \
    --model_name=coatnet --model_base_path=/srv/models/coatnet
  bazel run //serving:local_server -- --model_config_file=serving/models.config

Flags follow tensorflow_model_server's names where they overlap. With
--port=0 a free port is chosen; --port_file receives it once the models
are loaded and the port is open.
"""

from __future__ import annotations

import os

from absl import app, flags

from artifacts import core
from serving import local_server, servables

_PORT = flags.DEFINE_integer("port", 8500, "gRPC port (0: pick a free one).")
_HOST = flags.DEFINE_string("host", "localhost", "Interface to bind.")
_PORT_FILE = flags.DEFINE_string(
    "port_file", "", "Write the bound port here once serving (for --port=0)."
)
_NAME = flags.DEFINE_string("model_name", "", "Model name (one model).")
_BASE = flags.DEFINE_string(
    "model_base_path", "", "Directory of integer versions (one model)."
)
_CONFIG = flags.DEFINE_string(
    "model_config_file", "", "models.config text proto (several models)."
)
_POLL = flags.DEFINE_float(
    "file_system_poll_wait_seconds", 1.0, "Rescan interval; 0: never."
)
_WARMUP = flags.DEFINE_bool(
    "enable_model_warmup", True, "Replay assets.extra warmup requests."
)
_THREADS = flags.DEFINE_integer(
    "grpc_max_threads",
    local_server.MAX_WORKERS,
    "Calls served at once (TF Serving's flag of the same name).",
)
_CONCURRENT = flags.DEFINE_integer(
    "max_concurrent_rpcs",
    local_server.MAX_CONCURRENT_RPCS,
    "Calls admitted, running or queued; beyond: RESOURCE_EXHAUSTED.",
)
_MESSAGE = flags.DEFINE_integer(
    "max_message_bytes",
    local_server.MAX_MESSAGE_BYTES,
    "Largest request accepted; beyond: RESOURCE_EXHAUSTED.",
)
_CERT = flags.DEFINE_string("ssl_cert_file", "", "Server certificate (PEM).")
_KEY = flags.DEFINE_string("ssl_key_file", "", "Server private key (PEM).")
_CLIENT_CA = flags.DEFINE_string(
    "ssl_client_ca_file", "", "Require client certificates signed by this."
)


def sources_from_flags() -> list[servables.ModelSource]:
    """The models named by --model_config_file or --model_name/_base_path."""
    if _CONFIG.value:
        with open(core.resolve_user_path(_CONFIG.value)) as f:
            return servables.sources_from_config(f.read())
    if not _NAME.value or not _BASE.value:
        raise app.UsageError(
            "Give --model_config_file, or --model_name and --model_base_path."
        )
    return [
        servables.ModelSource(_NAME.value, core.resolve_user_path(_BASE.value))
    ]


def main(argv):
    del argv  # Unused.
    credentials = None
    if _CERT.value:
        credentials = local_server.server_credentials(
            _CERT.value, _KEY.value, _CLIENT_CA.value
        )
    server = local_server.LocalServer(
        sources_from_flags(),
        host=_HOST.value,
        port=_PORT.value,
        max_workers=_THREADS.value,
        max_concurrent_rpcs=_CONCURRENT.value,
        max_message_bytes=_MESSAGE.value,
        warmup=_WARMUP.value,
        poll_seconds=_POLL.value,
        server_credentials=credentials,
    ).start()
    if _PORT_FILE.value:
        tmp = f"{_PORT_FILE.value}.tmp"
        with open(tmp, "w") as f:
            f.write(str(server.port))
        os.replace(tmp, _PORT_FILE.value)
    print(
        f"Serving {server.manager.model_names} on {server.address}", flush=True
    )
    server.wait()


if __name__ == "__main__":
    app.run(main)
