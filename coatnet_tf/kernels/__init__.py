"""Kernel settings of CoAtNet: the layer classes each setting builds.

`CoAtNetConfig.kernels` names one setting:

- "reference": `coatnet_tf.layers` and `coatnet_tf.transformer`, the
  paper's formulas with one forward path each;
- "fused": `coatnet_tf.kernels.fused`, subclasses of those layers with the
  CPU-tuned paths of `coatnet_tf.kernels.cpu_ops`, `gelu_ops` and
  `attention_ops`.

Both build the same variables under the same names, so checkpoints load
across settings. The setting is chosen only here, from the config; no
layer inspects the distribution strategy or the device.
"""

from __future__ import annotations

import dataclasses

import tf_keras

from coatnet_tf import config as config_lib
from coatnet_tf import layers, transformer
from coatnet_tf.kernels import fused


@dataclasses.dataclass(frozen=True)
class LayerClasses:
    """The block classes a kernel setting builds a model from."""

    stem: type[tf_keras.layers.Layer]
    mbconv: type[tf_keras.layers.Layer]
    transformer: type[tf_keras.layers.Layer]


_CLASSES = {
    config_lib.REFERENCE: LayerClasses(
        layers.ConvStem, layers.MBConvBlock, transformer.TransformerBlock
    ),
    config_lib.FUSED: LayerClasses(
        fused.FusedConvStem,
        fused.FusedMBConvBlock,
        fused.FusedTransformerBlock,
    ),
}


def layer_classes(kernels: str) -> LayerClasses:
    """The stem, MBConv and Transformer block classes of a kernel setting.

    Args:
      kernels: one of `config.KERNEL_SETTINGS`.

    Returns:
      A `LayerClasses`.

    Raises:
      ValueError: an unknown setting.
    """
    if kernels not in _CLASSES:
        raise ValueError(
            f"Unknown kernels {kernels!r}; known: {sorted(_CLASSES)}."
        )
    return _CLASSES[kernels]
