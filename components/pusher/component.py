"""The Pusher component: publishes a blessed model to TF Serving's store.

Inputs: `model` (the Exporter's Model, with `Format-Serving/`), `blessing`
(the Evaluator's ModelBlessing) and optional `infra_blessing` (the
Exporter's). Output: `pushed_model` (PushedModel) with the properties TFX's
Pusher records: `pushed` (1/0), `pushed_version` and `pushed_destination`
(the version directory), plus `model_name` and `reason`.

Only a model blessed by the Evaluator, and by infra-validation when that
blessing is given, is pushed, to `<serving_base>/<model_name>/<version>/`
(see `artifacts.publish` for why a server never sees it half-written and
a killed push is never taken for a pushed version). The version is the
newest existing + 1, or the Unix time (TFX's
UNIX_TIMESTAMP). Pushing the export that is already the newest version
pushes nothing and reports that version (re-runs are idempotent). The last
`keep_versions` versions are kept; older ones are deleted after the push.

The blessings must be about the model being pushed: the Evaluator's
records the trained Model it judged (`current_model`), which must be the
exported model's `source_model` (or the model itself when it was not
exported from another); the infra blessing records the exported Model it
validated (`model`). A blessing of another model is a wiring error and
raises `ArtifactError` rather than publishing an unvetted model.

Model names follow TF Serving's base-path conventions: letters, digits,
`.`, `_` and `-`, starting with a letter or digit (no path separators,
no `..`), at most 255 characters.

Concurrent pushes of one model name are not coordinated here: the
pipeline's lock serializes the runs that push.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from absl import logging

from artifacts import blessing as blessing_lib
from artifacts import model as model_io
from artifacts import model_store, publish
from components import base

VERSIONING = ("increment", "timestamp")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def validate_model_name(name: str) -> str:
    """Checks a served model name; returns it.

    The name becomes a directory under the serving base and the name
    clients ask for, so it must be one plain path component.

    Raises:
      ValueError: naming the bad name and what is allowed.
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"Bad model_name {name!r}: use 1-255 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (it becomes a "
            "directory under serving_base and the name clients request)."
        )
    return name


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
        validate_model_name(self.model_name)


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
        check_blessings_match(inputs)
        refusal = _refusal(inputs)
        if refusal:
            _record(pushed, config.model_name, None, "", refusal)
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
        _record(
            pushed,
            config.model_name,
            published.version,
            published.destination,
            reason,
        )


def _same_uri(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def check_blessings_match(inputs: Mapping[str, base.Artifact]) -> None:
    """Raises unless the blessings were written for the model pushed.

    Args:
      inputs: the Pusher's inputs: `model`, `blessing`, optional
        `infra_blessing`.

    Raises:
      base.ArtifactError: a blessing names another model, or none.
    """
    model = inputs["model"]
    judged = model.properties.get("source_model") or model.uri
    blessing = inputs["blessing"]
    recorded = blessing.properties.get("current_model", "")
    if not recorded:
        raise base.ArtifactError(
            f"Blessing {blessing.uri} records no model (property "
            "'current_model'); re-run the Evaluator to produce it."
        )
    if not _same_uri(recorded, judged):
        raise base.ArtifactError(
            f"Blessing {blessing.uri} is for model {recorded}, but the model "
            f"pushed, {model.uri}, was exported from {judged}; pass the "
            "blessing the Evaluator wrote for this model."
        )
    infra = inputs.get("infra_blessing")
    if infra is None or not blessing_lib.is_blessed(infra, blessing_lib.INFRA):
        return  # An unblessed infra blessing is refused with a reason.
    validated = infra.properties.get("model", "")
    if not validated or not _same_uri(validated, model.uri):
        raise base.ArtifactError(
            f"Infra blessing {infra.uri} is for model {validated or 'none'}"
            f", not {model.uri}; pass the infra_blessing the Exporter wrote "
            "with this model."
        )


def _refusal(inputs: Mapping[str, base.Artifact]) -> str:
    """Why the model may not be pushed ("" when it may)."""
    blessing = inputs["blessing"]
    if not blessing_lib.is_blessed(blessing, blessing_lib.MODEL):
        return f"Not pushed: {blessing.uri} is not BLESSED."
    if int(inputs["model"].properties.get("exported", 1)) != 1:
        return f"Not pushed: {inputs['model'].uri} was not exported."
    infra = inputs.get("infra_blessing")
    if infra is not None and not blessing_lib.is_blessed(
        infra, blessing_lib.INFRA
    ):
        return (
            f"Not pushed: {infra.uri} is not {blessing_lib.INFRA_BLESSED_FILE}"
            f" ({blessing_lib.reason(infra) or 'no reason recorded'})."
        )
    return ""


def _record(
    artifact: base.Artifact,
    model_name: str,
    version: int | None,
    destination: str,
    reason: str,
) -> None:
    """Records the push (a version: pushed; None: refused)."""
    model_store.PushedModel(
        pushed=version is not None,
        model_name=model_name,
        version=version,
        destination=destination,
        reason=reason,
    ).record(artifact)
    logging.info("Pusher: %s", reason)
