r"""Describe a CoAtNet variant: stages, token grids, bias tables, size, cost.

`describe` returns, ready for JSON: the resolved config; per stage its
kind, depth, width, output stride, output grid and, for Transformer
stages, the head count and the relative bias table shape
`[heads, 2H - 1, 2W - 1]` (the shapes that change when finetuning at
another resolution); the parameter count; and optionally the forward
multiply-adds per image measured on the traced graph (`forward_flops`).
Its CLI is describe_main.py:

    bazel run //coatnet_tf:describe -- --variant=coatnet-3 --image_size=384
"""

from __future__ import annotations

from typing import Any

from coatnet_tf import config as config_lib
from coatnet_tf import model as model_lib


def describe(
    name: str,
    num_classes: int = 1000,
    image_size: int | tuple[int, int] = 224,
    flops: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """A JSON-ready description of a variant at a resolution.

    Args:
      name: a variant of `list_variants()`.
      num_classes: classifier width.
      image_size: input side or (height, width).
      flops: also trace the forward pass and count its multiply-adds.
      **overrides: other `CoAtNetConfig` fields.

    Returns:
      {"config", "stages", "params", ["forward_mult_adds"]}.

    Raises:
      ValueError: unknown variant or override.
    """
    import numpy as np

    config = config_lib.get_config(
        name, num_classes=num_classes, image_size=image_size, **overrides
    )
    stages = []
    for spec, stride, grid in zip(
        config.stages, config.stage_strides(), config.stage_grids()
    ):
        stage = {
            "kind": spec.kind,
            "depth": spec.depth,
            "width": spec.width,
            "output_stride": stride,
            "grid": list(grid),
        }
        if spec.kind == config_lib.TRANSFORMER:
            heads = spec.width // config.head_size
            stage["heads"] = heads
            stage["bias_table"] = [heads, 2 * grid[0] - 1, 2 * grid[1] - 1]
        stages.append(stage)
    model = model_lib.CoAtNet(config)
    graph = model_lib.forward_graph(model)  # One trace; builds the model.
    result = {
        "config": config.to_dict(),
        "stages": stages,
        "params": model.count_params(),
        "trainable_params": sum(
            int(np.prod(v.shape)) for v in model.trainable_weights
        ),
    }
    if flops:
        result["forward_mult_adds"] = model_lib.graph_flops(graph) // 2
    return result
