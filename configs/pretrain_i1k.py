"""ImageNet-1K from scratch (Table 10, column 1; §4.1).

At 224 for 300 epochs, global batch 4096, AdamW lr 1e-3 with a 10K-step
warmup and cosine decay to 1e-5, weight decay 0.05, clip 1.0, RandAugment
(2, 15), Mixup 0.8, label smoothing 0.1, softmax, no EMA; stochastic depth
0.2/0.3/0.5/0.7 for CoAtNet-0/1/2/3. These are the `TrainerConfig`
defaults; the recipe names the loss (the default "auto" would also pick
softmax for single-label data) and picks the TPU runtime settings.
"""

import dataclasses

from components.trainer import config as config_lib


def get_config() -> config_lib.TrainerConfig:
    """The ImageNet-1K pretraining recipe."""
    base = config_lib.TrainerConfig()
    return dataclasses.replace(
        base,
        loss=dataclasses.replace(base.loss, kind="softmax"),
        runtime=dataclasses.replace(base.runtime, steps_per_execution=100),
    )
