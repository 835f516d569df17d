"""ImageNet-21K pretraining (Table 10, column 3).

At 224 for 90 epochs, batch 4096, per-class sigmoid loss with label
smoothing 1e-4, AdamW lr 1e-3 with a 5-epoch warmup and linear decay to
1e-5, weight decay 0.01, clip 1.0, no Mixup, no EMA; stochastic depth
0.3/0.5/0.7 for CoAtNet-2/3/4. RandAugment is off (CoAtNet-2 and 3); the
"PT-RA" CoAtNet-4 runs use RandAugment (2, 5): override
`augment.randaug_layers=2`. The head bias starts at -10 (big_vision's
i21k value for the sigmoid loss).
"""

import dataclasses

from configs import pretrain_i1k


def get_config():
    """The ImageNet-21K pretraining recipe."""
    base = pretrain_i1k.get_config()
    return dataclasses.replace(
        base,
        model=dataclasses.replace(
            base.model,
            variant="coatnet-2",
            drop_path_by_variant={
                "coatnet-2": 0.3,
                "coatnet-3": 0.5,
                "coatnet-4": 0.7,
            },
            head_init_bias=-10.0,
        ),
        augment=dataclasses.replace(
            base.augment,
            randaug_layers=0,
            randaug_magnitude=5.0,
            mixup_alpha=0.0,
        ),
        loss=dataclasses.replace(
            base.loss, kind="sigmoid", label_smoothing=1e-4
        ),
        optimizer=dataclasses.replace(base.optimizer, weight_decay=0.01),
        schedule=dataclasses.replace(
            base.schedule, decay="linear", warmup_steps=0, warmup_epochs=5.0
        ),
        # big_vision's per-host buffer for i21k.
        data=dataclasses.replace(base.data, shuffle_buffer_size=250_000),
        train_epochs=90.0,
    )
