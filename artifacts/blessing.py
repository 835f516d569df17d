"""ModelBlessing artifacts: a verdict as an empty marker file and a property.

Two kinds share one protocol (TFX's):

- the Evaluator's model blessing: `<uri>/BLESSED` or `<uri>/NOT_BLESSED`;
- the Exporter's infra blessing: `<uri>/INFRA_BLESSED` or
  `<uri>/INFRA_NOT_BLESSED`, with the `reason` property saying why.

Both set the `blessed` property (1 or 0). A blessing counts only when the
positive marker exists and the property agrees: a run that died between
writing the marker and recording the artifact is not blessed.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from artifacts import core

BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
INFRA_BLESSED_FILE = "INFRA_BLESSED"
INFRA_NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
BLESSED_PROPERTY = "blessed"
REASON_PROPERTY = "reason"


@dataclasses.dataclass(frozen=True)
class Markers:
    """The marker file names of one kind of blessing."""

    blessed: str
    not_blessed: str


MODEL = Markers(BLESSED_FILE, NOT_BLESSED_FILE)
INFRA = Markers(INFRA_BLESSED_FILE, INFRA_NOT_BLESSED_FILE)


def write(
    artifact: core.Artifact,
    blessed: bool,
    kind: Markers = MODEL,
    reason: str | None = None,
) -> None:
    """Writes the verdict's marker, removes the opposite one, sets the
    properties.

    Args:
      artifact: a ModelBlessing artifact (its directory exists).
      blessed: the verdict.
      kind: `MODEL` or `INFRA`.
      reason: when given, recorded as the `reason` property.
    """
    stale = kind.not_blessed if blessed else kind.blessed
    if tf.io.gfile.exists(os.path.join(artifact.uri, stale)):
        tf.io.gfile.remove(os.path.join(artifact.uri, stale))
    marker = kind.blessed if blessed else kind.not_blessed
    with tf.io.gfile.GFile(os.path.join(artifact.uri, marker), "w") as f:
        f.write("")  # GFile creates the file on the first write only.
    artifact.properties[BLESSED_PROPERTY] = int(blessed)
    if reason is not None:
        artifact.properties[REASON_PROPERTY] = reason


def is_blessed(artifact: core.Artifact, kind: Markers = MODEL) -> bool:
    """A ModelBlessing's verdict: the marker file and the property agree."""
    marker = tf.io.gfile.exists(os.path.join(artifact.uri, kind.blessed))
    return marker and blessed_property(artifact) == 1


def blessed_property(artifact: core.Artifact) -> int | None:
    """The recorded `blessed` property (1, 0), None when there is none."""
    value = artifact.properties.get(BLESSED_PROPERTY)
    return None if value is None else int(value)


def reason(artifact: core.Artifact) -> str:
    """The recorded reason of an infra blessing (or a refusal)."""
    return str(artifact.properties.get(REASON_PROPERTY, ""))
