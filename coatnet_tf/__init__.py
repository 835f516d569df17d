"""CoAtNet image classifiers in tf_keras (Dai et al., arXiv 2106.04803 v2).

Public API:

- `create_model(name, num_classes, image_size, **overrides)` builds a
  `CoAtNet` from the variant table (`VARIANTS`, `list_variants()`).
- `relative_position_index(height, width)` and
  `resize_relative_position_bias(table, height, width)`: the relative
  attention bias of Eq. 3 and its bilinear resize for a new resolution
  (App. A.1).
- `restore_from_checkpoint(model, checkpoint_path, head_rows=None)` restores
  weights trained at any resolution and class count.
- `CoAtNetConfig.kernels`: "reference" (the paper's layers, plainly) or
  "fused" (CPU-tuned, `coatnet_tf.kernels`); same variables either way.
- `CoAtNet.set_noise_state(seed, step)`: keys the stochastic-depth masks
  of a training step (`coatnet_tf.noise`).
"""

import os

# The project uses tf_keras (Keras 2); the flag must be set before TensorFlow
# is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from coatnet_tf.checkpoint import (  # noqa: E402
    RestoreReport,
    restore_from_checkpoint,
)
from coatnet_tf.config import (  # noqa: E402
    KERNEL_SETTINGS,
    VARIANTS,
    CoAtNetConfig,
    StageSpec,
    get_config,
    list_variants,
)
from coatnet_tf.layers import (  # noqa: E402
    ClassificationHead,
    ConvStem,
    MBConvBlock,
    SqueezeExcitation,
    StochasticDepth,
)
from coatnet_tf.model import (  # noqa: E402
    CoAtNet,
    create_model,
    forward_flops,
    forward_flops_by_op,
    forward_graph,
    freeze_for_inference,
    graph_flops,
)
from coatnet_tf.noise import NoiseState  # noqa: E402
from coatnet_tf.relative_position import (  # noqa: E402
    RelativeAttention,
    grid_size,
    relative_position_bias,
    relative_position_index,
    resize_relative_position_bias,
)
from coatnet_tf.transformer import FeedForward, TransformerBlock  # noqa: E402

__all__ = [
    "KERNEL_SETTINGS",
    "VARIANTS",
    "ClassificationHead",
    "CoAtNet",
    "CoAtNetConfig",
    "ConvStem",
    "FeedForward",
    "MBConvBlock",
    "NoiseState",
    "RelativeAttention",
    "RestoreReport",
    "SqueezeExcitation",
    "StageSpec",
    "StochasticDepth",
    "TransformerBlock",
    "create_model",
    "forward_flops",
    "forward_flops_by_op",
    "forward_graph",
    "freeze_for_inference",
    "get_config",
    "graph_flops",
    "grid_size",
    "list_variants",
    "relative_position_bias",
    "relative_position_index",
    "resize_relative_position_bias",
    "restore_from_checkpoint",
]
