r"""CLI: prints a training recipe, with overrides applied, as JSON.

    bazel run //configs:show -- --config=pretrain_i21k
    bazel run //configs:show -- --config=finetune_i1k_384 \
      --set=model.variant=coatnet-3
    bazel run //configs:show -- --config=i21k_to_i1k.finetune
    bazel run //configs:show -- --config_file=my_recipe.json

--config names a recipe or a preset's stage (configs/presets.py);
--config_file a JSON file whose "base" names either. The loader is the
Trainer's (`components.trainer.config.load`).

The JSON is the form the Trainer writes next to its outputs, so a recipe
can be read, diffed and edited before a run.
"""

from __future__ import annotations

import json

from absl import app, flags

import configs
from components import base, cli
from components.trainer import config as trainer_config

_CONFIG = flags.DEFINE_string(
    "config",
    "pretrain_i1k",
    f"A recipe ({', '.join(configs.list_configs())}) or a preset stage "
    "(i21k_to_i1k.finetune).",
)
_CONFIG_FILE = flags.DEFINE_string(
    "config_file", "", 'JSON TrainerConfig; "base" names its recipe.'
)
_OVERRIDES = flags.DEFINE_multi_string(
    "set", [], "field.path=value, repeatable."
)
cli.define_renamed_flag("config_override", "set")


def render(name: str, overrides: list[str]) -> str:
    """The recipe `name` with `overrides` applied, as indented JSON.

    Args:
      name: a recipe, a preset stage or a JSON file (see
        `components.trainer.config.load`).
      overrides: "field.path=value" strings.

    Returns:
      The JSON text.

    Raises:
      ValueError: unknown recipe, malformed override or unknown field.
    """
    config = trainer_config.load(name, cli.parse_set_flags(overrides))
    return json.dumps(base.config_to_json(config), indent=2, sort_keys=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    cli.apply_renamed_flags()
    try:
        print(render(_CONFIG_FILE.value or _CONFIG.value, _OVERRIDES.value))
    except ValueError as e:
        raise app.UsageError(str(e)) from e


if __name__ == "__main__":
    app.run(main)
