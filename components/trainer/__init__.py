"""The Trainer component: pretrain and finetune CoAtNet under any strategy.

Modules: `config` (the typed config), `augment` (training preprocessing),
`input_pipeline` (tf.data per input worker), `losses`, `optimization`
(schedule and AdamW), `strategy` (strategies by name), `train_lib` (the
resumable custom loop), `component` (the `base.Component`) and `main` (the
CLI).
"""

import os

# Model Garden and this project use tf_keras (Keras 2); the flag must be set
# before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
