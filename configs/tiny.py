"""coatnet-tiny at 32 px: the recipe's shape at CPU scale, for tests and demos.

Same loss, optimizer and augmentations as ImageNet-1K pretraining, scaled
down: batch 16, 60 steps with a 6-step warmup, a higher peak lr (tiny
models on tiny data learn fast), small shuffle buffers, frequent logs and
checkpoints, no Mixup (a few hundred examples do not need it), no
stochastic depth, float32.
"""

import dataclasses

from components.trainer import config as config_lib


def get_config() -> config_lib.TrainerConfig:
    """The tiny recipe."""
    base = config_lib.TrainerConfig()
    return dataclasses.replace(
        base,
        model=dataclasses.replace(
            base.model,
            variant="coatnet-tiny",
            image_size=32,
            drop_path_rate=0.0,
        ),
        data=dataclasses.replace(
            base.data, shuffle_buffer_size=256, cycle_length=4
        ),
        augment=dataclasses.replace(
            base.augment, randaug_magnitude=5.0, mixup_alpha=0.0
        ),
        optimizer=dataclasses.replace(base.optimizer, learning_rate=3e-3),
        schedule=dataclasses.replace(base.schedule, warmup_steps=6),
        runtime=dataclasses.replace(
            base.runtime,
            precision="float32",
            checkpoint_every_steps=20,
            keep_checkpoints=3,
            log_every_steps=10,
        ),
        batch_size=16,
        eval_batch_size=16,
        train_steps=60,
    )
