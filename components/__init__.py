"""TFX-style components: ExampleGen, Trainer, Evaluator, Exporter, Pusher."""

import os

# Model Garden and this project use tf_keras (Keras 2); the flag must be set
# before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
