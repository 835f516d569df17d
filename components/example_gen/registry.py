"""The ExampleGen sources by name: `--source` to the class that reads it.

The contract every source follows is `sources.Source`; each source module
imports it, so the table of sources lives here, above them, and nothing
imports in a circle.
"""

from __future__ import annotations

from components.example_gen import config as config_lib
from components.example_gen import (
    image_folder,
    imagenet21k,
    jft,
    sources,
    tfds_source,
)

SOURCES: dict[str, type[sources.Source]] = {
    config_lib.IMAGE_FOLDER: image_folder.ImageFolderSource,
    config_lib.IMAGENET21K: imagenet21k.ImageNet21kSource,
    config_lib.JFT: jft.JftSource,
    config_lib.TFDS: tfds_source.TfdsSource,
}


def make_source(
    config: config_lib.ExampleGenConfig, resolved: sources.ResolvedInputs
) -> sources.Source:
    """The source object for `config.source`.

    Args:
      config: the ExampleGen config; `config.source` names the source.
      resolved: the input spans and versions the run reads.

    Returns:
      The source, ready to plan and enumerate.

    Raises:
      ValueError: `config.source` names no source.
    """
    if config.source not in SOURCES:
        raise ValueError(
            f"--source={config.source!r}: expected one of {sorted(SOURCES)}."
        )
    return SOURCES[config.source](config, resolved)
