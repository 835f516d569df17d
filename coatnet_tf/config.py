"""CoAtNet configuration: one frozen dataclass and the variant table.

The variant table is the paper's Table 3 (CoAtNet-0 to 4), Table 11
(CoAtNet-5) and Table 12 (CoAtNet-6 and 7), plus `coatnet-tiny`, a small
model with the same anatomy for tests. A variant is a stem width and a
sequence of `StageSpec`s; CoAtNet-6 and 7 describe their mixed S3 as two
specs at the same stride (8 MBConv blocks, then 42 Transformer blocks at
twice the width, App. A.2).

Every field of `CoAtNetConfig` except `name` and `stages` is an override
accepted by `create_model`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

MBCONV = "mbconv"
TRANSFORMER = "transformer"
STAGE_KINDS = (MBCONV, TRANSFORMER)
REFERENCE = "reference"
FUSED = "fused"
KERNEL_SETTINGS = (REFERENCE, FUSED)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage (or one part of a mixed stage) of CoAtNet.

    Attributes:
      kind: "mbconv" (S1, S2) or "transformer" (S3, S4).
      depth: number of blocks (the paper's L).
      width: output channels of every block (the paper's D).
      stride: 2 when the first block downsamples (Eq. 4, 5), 1 for the
        Transformer half of the mixed S3 of CoAtNet-6 and 7, whose first
        block only projects the channels.
    """

    kind: str
    depth: int
    width: int
    stride: int = 2

    def __post_init__(self):
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"Stage kind {self.kind!r} not in {STAGE_KINDS}.")
        if self.depth < 1 or self.width < 1 or self.stride not in (1, 2):
            raise ValueError(f"Invalid stage {self}.")


@dataclasses.dataclass(frozen=True)
class CoAtNetConfig:
    """Everything needed to build a `CoAtNet`.

    Attributes:
      name: the variant name, e.g. "coatnet-0".
      stem_width: channels of both S0 convs.
      stages: the stages after the stem, in order.
      num_classes: classifier width; 0 builds no classifier and the model
        returns the pooled (pre-logits) features.
      image_size: input (height, width); an int means a square input. It
        fixes the token grids of S3 and S4, hence the shapes of the relative
        bias tables.
      head_size: channels per attention head: 32 for CoAtNet-0 to 4, 64 for
        5, 128 for 6 and 7 (Table 3, 11, 12).
      mbconv_expansion: inverted-bottleneck expansion, relative to the
        block's output channels (the paper says 4, not the base; output
        channels give its parameter counts).
      se_ratio: squeeze-excitation bottleneck, relative to the block's
        output channels (the paper says 0.25, not the base).
      ffn_expansion: Transformer FFN expansion (Fig. 4: E=4).
      pre_logits: add the pre-logits layer (LayerNorm, then a dense layer
        with tanh) between pooling and classifier. The paper's parameter
        counts include it; set False for pooling straight into the
        classifier.
      pre_logits_size: width of the pre-logits dense layer; None means the
        width of the last stage (D4), as the paper's counts imply.
      drop_path_rate: stochastic depth rate of the last block; block i of n
        drops its residual branch with rate drop_path_rate * i / (n - 1).
        Table 10 uses 0.2/0.3/0.5/0.7 for CoAtNet-0/1/2/3 on ImageNet-1K.
      dropout_rate: dropout before the classifier.
      head_init_bias: initial classifier bias; the classifier kernel starts
        at zero, so every logit starts at this value (e.g. -10 for a
        sigmoid loss over many classes).
      gelu_approximate: use the tanh approximation of GELU instead of the
        exact erf form (the paper does not say which).
      bn_momentum: BatchNorm moving-average momentum.
      bn_epsilon: BatchNorm epsilon.
      sync_batch_norm: compute BatchNorm batch statistics over all replicas
        of the distribution strategy instead of per replica, for small
        per-core batches (e.g. large models on TPU pods).
      ln_epsilon: LayerNorm epsilon.
      kernels: how the layers compute, with the same variables either way:
        "reference", the paper's formulas written plainly, one forward
        path per layer (`coatnet_tf.layers`, `coatnet_tf.transformer`);
        or "fused" (the default), the CPU-tuned paths of
        `coatnet_tf.kernels`: 1x1 convs as matmuls, conv gradients as
        matmuls, BatchNorm statistics from the expansion's input, GELU as
        XLA-fused kernels, BatchNorms folded at inference. "fused" is
        what the trainer, benchmarks and CPU serving run (docs/
        performance.md measures it). On TPU choose "reference": XLA fuses
        BatchNorm and GELU into the convs itself, where the fused paths'
        covariance matmul and hand-written gradients only add FLOPs and
        hide the ops from its fusion. On CPU without XLA, "reference"
        under mixed_bfloat16 takes its bias gradients from TensorFlow's
        BiasAddGrad, which sums bfloat16 in bfloat16 (15% to 54% off on
        coatnet-0); "fused" sums them in float32.
    """

    name: str
    stem_width: int
    stages: tuple[StageSpec, ...]
    num_classes: int = 1000
    image_size: tuple[int, int] = (224, 224)
    head_size: int = 32
    mbconv_expansion: int = 4
    se_ratio: float = 0.25
    ffn_expansion: int = 4
    pre_logits: bool = True
    pre_logits_size: int | None = None
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    head_init_bias: float = 0.0
    gelu_approximate: bool = False
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    sync_batch_norm: bool = False
    ln_epsilon: float = 1e-5
    kernels: str = FUSED

    def __post_init__(self):
        # JSON round trips (model specs, get_config) turn tuples into lists
        # and StageSpecs into dicts; normalize so equality and hashing work.
        stages = tuple(
            s if isinstance(s, StageSpec) else StageSpec(**s)
            for s in self.stages
        )
        object.__setattr__(self, "stages", stages)
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "image_size", tuple(int(s) for s in size))
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"Invalid image_size {self.image_size}.")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0: {self.num_classes}.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(
                f"drop_path_rate {self.drop_path_rate} not in [0,1)"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate {self.dropout_rate} not in [0, 1)")
        if self.kernels not in KERNEL_SETTINGS:
            raise ValueError(
                f"kernels {self.kernels!r} not in {KERNEL_SETTINGS}."
            )
        for stage in self.stages:
            if stage.kind == TRANSFORMER and stage.width % self.head_size:
                raise ValueError(
                    f"Stage width {stage.width} is not a multiple of "
                    f"head_size {self.head_size}."
                )

    @property
    def num_blocks(self) -> int:
        """Blocks after the stem, over all stages."""
        return sum(stage.depth for stage in self.stages)

    @property
    def head_width(self) -> int:
        """Width of the pre-logits layer (D4 unless overridden)."""
        return self.pre_logits_size or self.stages[-1].width

    def stage_strides(self) -> list[int]:
        """Cumulative feature stride at the output of each stage."""
        stride, strides = 2, []  # The stem's first conv has stride 2.
        for stage in self.stages:
            stride *= stage.stride
            strides.append(stride)
        return strides

    def stage_grids(self) -> list[tuple[int, int]]:
        """Token grid (height, width) at the output of each stage.

        Every stride-2 op uses "SAME" padding, so a side n becomes ceil(n/2).
        """
        h, w = (math.ceil(s / 2) for s in self.image_size)
        grids = []
        for stage in self.stages:
            if stage.stride == 2:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
            grids.append((h, w))
        return grids

    def drop_path_rates(self) -> list[float]:
        """Stochastic depth rate per block, linear in the block index."""
        n = self.num_blocks
        if n == 1:
            return [self.drop_path_rate]
        return [self.drop_path_rate * i / (n - 1) for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; `from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CoAtNetConfig:
        """Builds a config from `to_dict` output."""
        return cls(**values)


def _stages(*specs: Sequence[Any]) -> tuple[StageSpec, ...]:
    return tuple(StageSpec(*spec) for spec in specs)


M, T = MBCONV, TRANSFORMER

# Table 3 (0 to 4), Table 11 (5), Table 12 (6, 7): (kind, L, D[, stride]).
VARIANTS: dict[str, CoAtNetConfig] = {
    "coatnet-0": CoAtNetConfig(
        "coatnet-0",
        64,
        _stages((M, 2, 96), (M, 3, 192), (T, 5, 384), (T, 2, 768)),
    ),
    "coatnet-1": CoAtNetConfig(
        "coatnet-1",
        64,
        _stages((M, 2, 96), (M, 6, 192), (T, 14, 384), (T, 2, 768)),
    ),
    "coatnet-2": CoAtNetConfig(
        "coatnet-2",
        128,
        _stages((M, 2, 128), (M, 6, 256), (T, 14, 512), (T, 2, 1024)),
    ),
    "coatnet-3": CoAtNetConfig(
        "coatnet-3",
        192,
        _stages((M, 2, 192), (M, 6, 384), (T, 14, 768), (T, 2, 1536)),
    ),
    "coatnet-4": CoAtNetConfig(
        "coatnet-4",
        192,
        _stages((M, 2, 192), (M, 12, 384), (T, 28, 768), (T, 2, 1536)),
    ),
    "coatnet-5": CoAtNetConfig(
        "coatnet-5",
        192,
        _stages((M, 2, 256), (M, 12, 512), (T, 28, 1280), (T, 2, 2048)),
        head_size=64,
    ),
    # Mixed S3: 2/3 of S2's MBConv blocks move into S3 at twice the width
    # (App. A.2); the 42 Transformer blocks follow at the same stride.
    #
    # Paper conflict, resolved by the model's size: Table 12 prints S4 of
    # CoAtNet-6 as D=2048, but Table 5 gives 1.47B parameters and 1521B
    # FLOPs at 512. Measured (bench/param_count.py, describe --flops): with
    # D=2048 the model has 1.350B parameters (-8.2%) and 1469B multiply-adds
    # at 512 (-3.4%); with D=3072, the S4 width of CoAtNet-7, it has 1.473B
    # (+0.2%) and 1499B (-1.4%). Both of the paper's size figures point to
    # 3072, so S4 is 3072 here.
    "coatnet-6": CoAtNetConfig(
        "coatnet-6",
        192,
        _stages(
            (M, 2, 192),
            (M, 4, 384),
            (M, 8, 768),
            (T, 42, 1536, 1),
            (T, 2, 3072),
        ),
        head_size=128,
    ),
    "coatnet-7": CoAtNetConfig(
        "coatnet-7",
        192,
        _stages(
            (M, 2, 256),
            (M, 4, 512),
            (M, 8, 1024),
            (T, 42, 2048, 1),
            (T, 2, 3072),
        ),
        head_size=128,
    ),
    # All four stage kinds, a bias table in S3 and S4; usable at 32 and 64 px.
    "coatnet-tiny": CoAtNetConfig(
        "coatnet-tiny",
        16,
        _stages((M, 1, 16), (M, 2, 32), (T, 2, 64), (T, 1, 128)),
        head_size=16,
    ),
}


def list_variants() -> list[str]:
    """Names accepted by `get_config` and `create_model`."""
    return list(VARIANTS)


def get_config(name: str, **overrides: Any) -> CoAtNetConfig:
    """The config of a named variant with some fields replaced.

    Args:
      name: a key of `VARIANTS`.
      **overrides: any `CoAtNetConfig` field except `name` and `stages`.

    Returns:
      The variant's config with the overrides applied.

    Raises:
      ValueError: unknown variant or unknown override.
    """
    if name not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}; known: {list_variants()}.")
    fields = {f.name for f in dataclasses.fields(CoAtNetConfig)}
    allowed = fields - {"name", "stages"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(
            f"Unknown overrides {sorted(unknown)}; allowed: {sorted(allowed)}."
        )
    return dataclasses.replace(VARIANTS[name], **overrides)
