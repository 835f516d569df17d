"""TF Serving client, a local gRPC model server and example server configs."""

import os

# tf_keras (Keras 2) must be chosen before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
