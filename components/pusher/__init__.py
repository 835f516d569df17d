"""The Pusher component (see component.py)."""

import os

# tf_keras (Keras 2) must be chosen before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
