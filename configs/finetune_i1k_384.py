"""ImageNet-21K to ImageNet-1K finetuning at 384 (Table 10, column 4).

From a 21K-pretrained model (the Trainer's `base_model`): 30 epochs at 384,
batch 1024, softmax with label smoothing 0.1, AdamW at a constant 5e-5 with
no warmup, weight decay 1e-8, clip 1.0, EMA 0.9999; stochastic depth and
RandAugment as in the pretraining (merged cells in Table 10), no Mixup. The
bias tables are resized by coatnet_tf at restore, and the 1K classifier is
taken from the matching rows of the 21K one when the labels are found
there (`finetune.head_rows="auto"`).
"""

import dataclasses

from configs import pretrain_i21k


def get_config():
    """The 21K to 1K finetuning recipe at 384."""
    base = pretrain_i21k.get_config()
    return dataclasses.replace(
        base,
        model=dataclasses.replace(
            base.model, image_size=384, head_init_bias=None
        ),
        loss=dataclasses.replace(
            base.loss, kind="softmax", label_smoothing=0.1
        ),
        optimizer=dataclasses.replace(
            base.optimizer,
            learning_rate=5e-5,
            weight_decay=1e-8,
            ema_decay=0.9999,
        ),
        schedule=dataclasses.replace(
            base.schedule,
            decay="constant",
            warmup_steps=0,
            warmup_epochs=0.0,
            end_learning_rate=5e-5,
        ),
        data=dataclasses.replace(base.data, shuffle_buffer_size=16_384),
        batch_size=1024,
        train_epochs=30.0,
    )
