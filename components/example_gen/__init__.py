"""ExampleGen: Beam preprocessing of image datasets to TFRecords.

Sources: class folders (ImageNet-1K), ImageNet-21K per-synset tars,
JFT-style multi-label manifests and prepared TFDS datasets. Output: a TFX
Examples artifact (see `component.py` and `records.py`).
"""

import os

# Model Garden and this project use tf_keras (Keras 2); the flag must be set
# before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
