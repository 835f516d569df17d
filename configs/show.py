r"""CLI: prints a training recipe, with overrides applied, as JSON.

    bazel run //configs:show -- --config=pretrain_i21k
    bazel run //configs:show -- --config=finetune_i1k_384 \
      --config_override=model.variant=coatnet-3

The JSON is the form the Trainer writes next to its outputs, so a recipe
can be read, diffed and edited before a run.
"""

from __future__ import annotations

import json

from absl import app, flags

import configs
from components import base

_CONFIG = flags.DEFINE_enum(
    "config", "pretrain_i1k", configs.list_configs(), "Recipe name."
)
_OVERRIDES = flags.DEFINE_multi_string(
    "config_override", [], "field.path=value, repeatable."
)


def render(name: str, overrides: list[str]) -> str:
    """The recipe `name` with `overrides` applied, as indented JSON.

    Args:
      name: one of `configs.list_configs()`.
      overrides: "field.path=value" strings.

    Returns:
      The JSON text.

    Raises:
      ValueError: unknown recipe, malformed override or unknown field.
    """
    config = base.apply_overrides(
        configs.get_config(name),
        base.parse_override_flags(overrides),
    )
    return json.dumps(base.config_to_json(config), indent=2, sort_keys=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    try:
        print(render(_CONFIG.value, _OVERRIDES.value))
    except ValueError as e:
        raise app.UsageError(str(e)) from e


if __name__ == "__main__":
    app.run(main)
