"""JFT pretraining (Table 10, column 5).

At 224 for 14 epochs, batch 4096, per-class sigmoid loss with label
smoothing 1e-4, AdamW with a 20K-step warmup and linear decay to 1e-5,
weight decay 0.01, clip 1.0, RandAugment (2, 5), no Mixup, no EMA;
stochastic depth 0.0/0.1/0.0 for CoAtNet-3/4/5. The peak lr is 1e-3 for
CoAtNet-3 and 5e-4 for 4 and 5: the `jft_to_i1k` preset
(configs/presets.py) sets it per variant; with the recipe alone, override
`optimizer.learning_rate=5e-4` with `--variant=coatnet-4` or `coatnet-5`.
"""

import dataclasses

from configs import pretrain_i21k


def get_config():
    """The JFT pretraining recipe (CoAtNet-3 by default)."""
    base = pretrain_i21k.get_config()
    return dataclasses.replace(
        base,
        model=dataclasses.replace(
            base.model,
            variant="coatnet-3",
            drop_path_by_variant={
                "coatnet-3": 0.0,
                "coatnet-4": 0.1,
                "coatnet-5": 0.0,
            },
        ),
        augment=dataclasses.replace(base.augment, randaug_layers=2),
        schedule=dataclasses.replace(
            base.schedule, warmup_steps=20_000, warmup_epochs=0.0
        ),
        train_epochs=14.0,
    )
