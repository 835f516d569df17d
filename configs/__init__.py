"""Training recipes as data: the paper's (Table 10) and a tiny one.

Each recipe is a module with `get_config() -> TrainerConfig` that starts
from `TrainerConfig()` (the ImageNet-1K pretraining recipe) or from another
recipe, and changes a few fields. `get_config(name)` looks one up.

  pretrain_i1k      ImageNet-1K from scratch at 224, 300 epochs.
  pretrain_i21k     ImageNet-21K at 224, sigmoid loss, 90 epochs.
  finetune_i1k_384  21K-pretrained model to ImageNet-1K at 384, 30 epochs.
  pretrain_jft      JFT at 224, sigmoid loss, 14 epochs.
  finetune_jft_i1k  JFT-pretrained model to ImageNet-1K at 384, 30 epochs.
  tiny              coatnet-tiny at 32 px for tests and demos on a CPU.
"""

import importlib
import os

# The recipes import TensorFlow-backed config code; the flag must be set
# before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

RECIPES = (
    "pretrain_i1k",
    "pretrain_i21k",
    "finetune_i1k_384",
    "pretrain_jft",
    "finetune_jft_i1k",
    "tiny",
)


def list_configs() -> list[str]:
    """Names `get_config` accepts."""
    return list(RECIPES)


def get_config(name: str):
    """The `TrainerConfig` of a named recipe.

    Args:
      name: one of `list_configs()`.

    Returns:
      A new `components.trainer.config.TrainerConfig`.

    Raises:
      ValueError: unknown name.
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown config {name!r}; known: {list(RECIPES)}.")
    return importlib.import_module(f"configs.{name}").get_config()
