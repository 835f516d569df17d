"""The Pusher component: publishes a blessed model to TF Serving's store.

Inputs: `model` (the Exporter's Model, with `Format-Serving/`), `blessing`
(the Evaluator's ModelBlessing) and optional `infra_blessing` (the
Exporter's). Output: `pushed_model` (PushedModel) with the properties TFX's
Pusher records: `pushed` (1/0), `pushed_version` and `pushed_destination`
(the version directory), plus `reason`.

Only a model blessed by the Evaluator, and by infra-validation when that
blessing is given, is pushed, to `<serving_base>/<model_name>/<version>/`
(see `publish` for why a server never sees it half-written and a killed
push is never taken for a pushed version). The
version is the newest existing + 1, or the Unix time (TFX's
UNIX_TIMESTAMP). Pushing the export that is already the newest version
pushes nothing and reports that version (re-runs are idempotent). The last
`keep_versions` versions are kept; older ones are deleted after the push.

Concurrent pushes of one model name are not coordinated here: the
pipeline's lock serializes the runs that push.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from absl import logging

from components import base, model_io
from components.evaluator import blessing as blessing_lib
from components.exporter import infra_validation
from components.pusher import model_store, publish

VERSIONING = ("increment", "timestamp")


@dataclasses.dataclass(frozen=True)
class PusherConfig:
    """The Pusher's execution properties.

    Attributes:
      serving_base: the model store root (TF Serving's base paths are
        `<serving_base>/<model_name>`); local or gs://.
      model_name: the served model's name.
      keep_versions: versions kept after a push (0: all).
      versioning: "increment" (max + 1) or "timestamp" (Unix seconds).
    """

    serving_base: str = ""
    model_name: str = "coatnet"
    keep_versions: int = 3
    versioning: str = "increment"

    def __post_init__(self):
        if self.versioning not in VERSIONING:
            raise ValueError(
                f"versioning must be one of {VERSIONING}, got "
                f"{self.versioning!r}."
            )
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"Bad model_name {self.model_name!r}.")


class Pusher(base.Component):
    """Copies a blessed SavedModel to a new integer version."""

    SPEC = base.ComponentSpec(
        name="Pusher",
        inputs={
            "model": base.MODEL,
            "blessing": base.MODEL_BLESSING,
            "infra_blessing": base.MODEL_BLESSING,
        },
        outputs={"pushed_model": base.PUSHED_MODEL},
        config_type=PusherConfig,
        optional_inputs=frozenset({"infra_blessing"}),
    )

    def run(
        self,
        inputs: Mapping[str, base.Artifact],
        outputs: Mapping[str, base.Artifact],
        config: PusherConfig,
    ) -> None:
        if not config.serving_base:
            raise ValueError("PusherConfig.serving_base is required.")
        pushed = outputs["pushed_model"]
        model_dir = os.path.join(config.serving_base, config.model_name)
        refusal = _refusal(inputs)
        if refusal:
            _record(pushed, False, None, "", refusal)
            return
        saved_model = os.path.join(inputs["model"].uri, model_io.SERVING_DIR)
        if not publish.exists(
            os.path.join(saved_model, model_store.SAVED_MODEL_PB)
        ):
            raise base.ArtifactError(
                f"{inputs['model'].uri} has no {model_io.SERVING_DIR} "
                "SavedModel; run the Exporter on it first."
            )
        published = publish.push(
            model_dir, saved_model, config.versioning == "timestamp"
        )
        if published.action == "unchanged":
            reason = "Already the newest version; nothing copied."
        else:
            removed = publish.prune(
                model_dir, config.keep_versions, published.version
            )
            verb = "Pushed" if published.action == "pushed" else "Completed"
            reason = (
                f"{verb} version {published.version}; removed "
                f"{removed or 'none'}."
            )
        _record(pushed, True, published.version, published.destination, reason)


def _refusal(inputs: Mapping[str, base.Artifact]) -> str:
    """Why the model may not be pushed ("" when it may)."""
    blessing = inputs["blessing"]
    if not blessing_lib.is_blessed(blessing):
        return f"Not pushed: {blessing.uri} is not BLESSED."
    if int(inputs["model"].properties.get("exported", 1)) != 1:
        return f"Not pushed: {inputs['model'].uri} was not exported."
    infra = inputs.get("infra_blessing")
    if infra is not None and not infra_validation.is_infra_blessed(infra):
        return (
            f"Not pushed: {infra.uri} is not INFRA_BLESSED "
            f"({infra.properties.get('reason', 'no reason recorded')})."
        )
    return ""


def _record(
    artifact: base.Artifact,
    pushed: bool,
    version: int | None,
    destination: str,
    reason: str,
) -> None:
    artifact.properties.update(
        {
            "pushed": int(pushed),
            "pushed_version": "" if version is None else str(version),
            "pushed_destination": destination,
            "reason": reason,
        }
    )
    logging.info("Pusher: %s", reason)
