"""The artifacts layer: one module per artifact type and its file format.

Each module owns one artifact's layout under its URI, its listing, reading,
writing, validation and constants; components, serving/ and pipeline/ go
through these modules rather than through paths and file names of their own.
The layer imports only `coatnet_tf` and third-party libraries.
"""

import os

# Model Garden and this project use tf_keras (Keras 2); the flag must be set
# before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
