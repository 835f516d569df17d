"""JFT to ImageNet-1K finetuning at 384 (Table 10, column 6).

From a JFT-pretrained model: 30 epochs, batch 512, softmax with label
smoothing 0.1, AdamW at a constant 5e-5 with no warmup, weight decay 1e-8,
clip 1.0, EMA 0.9999, RandAugment (2, 5), no Mixup, and stochastic depth
0.1/0.3/0.2 for CoAtNet-3/4/5 (higher than in the JFT pretraining: the
column is not a merged cell). The paper reports JFT models evaluated at
384 and 512 without stating the finetuning resolution of each; 384 here,
`model.image_size=512` for the other.
"""

import dataclasses

from configs import finetune_i1k_384, pretrain_jft


def get_config():
    """The JFT to 1K finetuning recipe at 384."""
    i21k = finetune_i1k_384.get_config()
    jft = pretrain_jft.get_config()
    return dataclasses.replace(
        i21k,
        model=dataclasses.replace(
            i21k.model,
            variant=jft.model.variant,
            drop_path_rate=None,
            drop_path_by_variant={
                "coatnet-3": 0.1,
                "coatnet-4": 0.3,
                "coatnet-5": 0.2,
            },
        ),
        augment=dataclasses.replace(
            i21k.augment, randaug_layers=2, randaug_magnitude=5.0
        ),
        batch_size=512,
    )
