"""The CoAtNet model (C-C-T-T, §3.2, Table 3) and its factory.

S0 conv stem (stride 2) -> S1, S2 MBConv -> S3, S4 relative-attention
Transformer -> global average pooling, pre-logits and classifier. Each
stage halves the grid in its first block; CoAtNet-6 and 7 add a second,
stride-1 part to S3 (App. A.2). Stochastic depth grows linearly with the
block index over all stages.

`forward_flops` counts a model's FLOPs on its traced graph: TensorFlow's
registered per-op statistics, 2 per multiply-add, so the count follows the
ops the model runs, not a formula (the paper's FLOPs are multiply-adds).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from coatnet_tf import config as config_lib
from coatnet_tf import kernels as kernels_lib
from coatnet_tf.layers import ClassificationHead
from coatnet_tf.noise import NoiseState, StochasticDepth
from coatnet_tf.relative_position import RelativeAttention
from coatnet_tf.transformer import TransformerBlock


@tf_keras.saving.register_keras_serializable(package="coatnet")
class CoAtNet(tf_keras.Model):
    """CoAtNet image classifier.

    Call it on normalized float images [B, H, W, 3] with (H, W) equal to
    `config.image_size`; it returns float32 logits [B, num_classes] (or the
    pooled features [B, D] when num_classes is 0).

    Checkpoint layout (the attribute path of every variable): `stem`,
    `blocks/<i>` (flat over stages), `head` with `head/classifier`; the
    same for both kernel settings (`config.kernels`).

    Stochastic depth draws its masks from `noise_state` (see
    `coatnet_tf.noise`): call `set_noise_state(seed, step)` before each
    training step; while it is unset, training mode drops no branch.

    Args:
      config: a `CoAtNetConfig` or its `to_dict()` form.
      **kwargs: base `Model` arguments (e.g. `name`).
    """

    def __init__(self, config: config_lib.CoAtNetConfig | Mapping, **kwargs):
        if not isinstance(config, config_lib.CoAtNetConfig):
            config = config_lib.CoAtNetConfig.from_dict(config)
        kwargs.setdefault("name", config.name.replace("-", "_"))
        super().__init__(**kwargs)
        self.config = config
        classes = kernels_lib.layer_classes(config.kernels)
        self.stem = classes.stem(
            config.stem_width,
            gelu_approximate=config.gelu_approximate,
            bn_momentum=config.bn_momentum,
            bn_epsilon=config.bn_epsilon,
            sync_batch_norm=config.sync_batch_norm,
            name="stem",
        )
        rates = iter(config.drop_path_rates())
        blocks, feature_ends = [], {}
        strides, grids = config.stage_strides(), config.stage_grids()
        for s, stage in enumerate(config.stages):
            for j in range(stage.depth):
                stride = stage.stride if j == 0 else 1
                name = f"block_{s + 1}_{j}"
                if stage.kind == config_lib.MBCONV:
                    block = classes.mbconv(
                        stage.width,
                        stride=stride,
                        expansion=config.mbconv_expansion,
                        se_ratio=config.se_ratio,
                        drop_path_rate=next(rates),
                        gelu_approximate=config.gelu_approximate,
                        bn_momentum=config.bn_momentum,
                        bn_epsilon=config.bn_epsilon,
                        sync_batch_norm=config.sync_batch_norm,
                        block_index=len(blocks),
                        name=name,
                    )
                else:
                    block = classes.transformer(
                        stage.width,
                        config.head_size,
                        grids[s],
                        stride=stride,
                        ffn_expansion=config.ffn_expansion,
                        drop_path_rate=next(rates),
                        gelu_approximate=config.gelu_approximate,
                        ln_epsilon=config.ln_epsilon,
                        block_index=len(blocks),
                        name=name,
                    )
                blocks.append(block)
            # The last part of a (mixed) stage at a stride gives its feature.
            feature_ends[f"stride_{strides[s]}"] = len(blocks) - 1
        self.blocks = blocks
        self._feature_ends = feature_ends
        self.head = ClassificationHead(
            config.num_classes,
            pre_logits_size=config.head_width if config.pre_logits else 0,
            dropout_rate=config.dropout_rate,
            head_init_bias=config.head_init_bias,
            ln_epsilon=config.ln_epsilon,
            name="head",
        )
        # A plain attribute holder, which Keras does not track: the state is
        # no weight and no part of checkpoints (see `NoiseState`).
        self.noise_state = NoiseState()
        for block in blocks:
            block.drop_path.noise_state = self.noise_state

    def set_noise_state(self, seed, step) -> None:
        """Keys the stochastic-depth masks of the next training step.

        Masks are a function of (seed, step, replica id, block index,
        branch) only, so a run resumed at step s draws the masks of the
        unbroken run. Call it before each step, in eager code or in the
        cross-replica part of a `tf.function` (a replica context works as
        well: the first replica's value is kept).

        Args:
          seed: the run's seed (int or int tensor).
          step: the step about to run, >= 0 (int or int tensor).
        """
        self.noise_state.set(seed, step)

    def clear_noise_state(self) -> None:
        """Unsets the noise state: training mode then drops no branch."""
        self.noise_state.clear()

    def drop_path_layers(self) -> list[StochasticDepth]:
        """Every stochastic-depth layer, in block order."""
        return [block.drop_path for block in self.blocks]

    @property
    def classifier(self) -> tf_keras.layers.Dense | None:
        """The final dense layer, or None when num_classes is 0."""
        return self.head.classifier

    def attention_layers(self) -> list[RelativeAttention]:
        """Every relative attention layer, in depth order."""
        return [
            b.attention for b in self.blocks if isinstance(b, TransformerBlock)
        ]

    def _check_input(self, images: tf.Tensor) -> tf.Tensor:
        expected = self.config.image_size
        if images.shape.rank != 4 or tuple(images.shape[1:3]) != expected:
            raise ValueError(
                f"{self.name} is built for {expected[0]}x{expected[1]} "
                f"images (its bias tables fix the token grids); got "
                f"{images.shape}. Build another model with image_size set "
                "and restore_from_checkpoint into it."
            )
        return images

    def _forward(self, images, training, feature_ends: Sequence[int] = ()):
        x = self.stem(self._check_input(images), training=training)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x, training=training)
            if i in feature_ends:
                features.append(x)
        return x, features

    def call(self, inputs, training=None):
        x, _ = self._forward(inputs, training)
        return self.head(x, training=training)

    def extract_features(
        self, images: tf.Tensor, training: bool = False
    ) -> dict[str, tf.Tensor]:
        """Multi-scale NHWC feature maps for downstream heads.

        Args:
          images: [B, H, W, 3] normalized float images.
          training: BatchNorm and stochastic-depth mode.

        Returns:
          {"stride_4": S1, "stride_8": S2, "stride_16": S3, "stride_32": S4}
          outputs, each [B, H / stride, W / stride, C] (sides rounded up), in
          the compute dtype.
        """
        names = list(self._feature_ends)
        _, maps = self._forward(
            images, training, [self._feature_ends[n] for n in names]
        )
        return dict(zip(names, maps))

    def get_config(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def create_model(
    name: str,
    num_classes: int = 1000,
    image_size: int | Sequence[int] = 224,
    **overrides: Any,
) -> CoAtNet:
    """Creates a CoAtNet variant (unbuilt; call it once to make variables).

    Args:
      name: a variant of `list_variants()`: "coatnet-0" ... "coatnet-7",
        "coatnet-tiny".
      num_classes: classifier width (0: no classifier).
      image_size: input side, or (height, width). It fixes the S3 and S4
        token grids and so the bias-table shapes; weights from another
        resolution load with `restore_from_checkpoint`.
      **overrides: other `CoAtNetConfig` fields, e.g. `drop_path_rate`,
        `dropout_rate`, `head_init_bias`, `pre_logits`, `pre_logits_size`,
        `head_size`, `gelu_approximate`, `bn_momentum`, `bn_epsilon`,
        `sync_batch_norm`, `ln_epsilon`, `kernels` (see `CoAtNetConfig` for
        each).

    Returns:
      A `CoAtNet`.

    Raises:
      ValueError: unknown variant or override, or an invalid value.
    """
    config = config_lib.get_config(
        name, num_classes=num_classes, image_size=image_size, **overrides
    )
    return CoAtNet(config)


def freeze_for_inference(model) -> int:
    """Computes once what the inference path derives from the weights.

    For serving a model whose weights no longer change: each layer with a
    `freeze_for_inference` method (the fused attention: its per-head
    kernels and relative bias; the fused pre-norms: gamma and beta in
    the compute dtype) keeps those results in non-trainable variables
    and reads them instead of recomputing them on every call.
    The outputs do not change; a frozen layer refuses to train. Call it
    after the weights are loaded.

    Args:
      model: a built `CoAtNet`.

    Returns:
      How many layers were frozen (0 with the reference kernels).
    """
    count = 0
    for layer in model.submodules:
        freeze = getattr(layer, "freeze_for_inference", None)
        if callable(freeze):
            freeze()
            count += 1
    return count


def forward_graph(model, batch_size: int = 1) -> tf.Graph:
    """Traces the inference forward pass once; no step runs.

    Tracing builds the variables of an unbuilt model, so this is also the
    cheap way to build one for counting parameters (`model.count_params()`)
    or restoring a checkpoint.

    Args:
      model: a `CoAtNet`.
      batch_size: images per forward pass.

    Returns:
      The traced graph, for FLOP counts (`graph_flops`).
    """
    height, width = model.config.image_size
    spec = tf.TensorSpec([batch_size, height, width, 3], tf.float32)
    # No autograph: the model has no tensor-dependent Python control flow,
    # and converting every layer call makes tracing several times slower.
    fn = tf.function(
        lambda images: model(images, training=False), autograph=False
    )
    return fn.get_concrete_function(spec).graph


def forward_flops(model, batch_size: int = 1) -> int:
    """FLOPs of one inference forward pass, from the traced graph.

    Uses `tf.compat.v1.profiler` float-operation statistics: 2 per
    multiply-add for convolutions and matmuls, 1 per element for
    element-wise ops; ops without statistics (e.g. erf, BatchNorm) count 0.

    Args:
      model: a `CoAtNet` (built or not).
      batch_size: images per forward pass.

    Returns:
      Total FLOPs for the batch; divide by 2 for multiply-adds.
    """
    return graph_flops(forward_graph(model, batch_size))


def graph_flops(graph: tf.Graph) -> int:
    """The FLOPs of a traced graph (see `forward_flops`)."""
    return int(_float_op_profile(graph).total_float_ops)


def _float_op_profile(graph: tf.Graph):
    """`tf.compat.v1.profiler`'s float-operation view of `graph`, by op."""
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options, cmd="op")


def forward_flops_by_op(model, batch_size: int = 1) -> dict[str, int]:
    """`forward_flops` split by op type, largest first.

    Args:
      model: a `CoAtNet`.
      batch_size: images per forward pass.

    Returns:
      {op type: FLOPs}, e.g. {"MatMul": ..., "Conv2D": ...}.
    """
    profile = _float_op_profile(forward_graph(model, batch_size))
    # The "op" view has one node per op type (nested for display); each
    # node's own count is `float_ops`.
    counts = collections.Counter()
    stack = list(profile.children)
    while stack:
        node = stack.pop()
        counts[node.name] += node.float_ops
        stack.extend(node.children)
    return {name: int(n) for name, n in counts.most_common() if n}
