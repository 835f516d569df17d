r"""Parameter counts of the CoAtNet variants against the paper's figures.

Builds each variant at 224 x 224 with 1000 classes (the paper's setting
for its tables), traces one inference call so that every variable exists,
counts the variables' elements and prints one JSON object:

    {"coatnet-5": {"params": ..., "paper": 688e6, "ratio": ...,
                   "within_1_percent": true, "build_s": ...}, ...}

The suite checks CoAtNet-0 to 4 (tests/coatnet_tf/params_test.py). The
large variants are measured here instead, because building them takes
real memory: CoAtNet-7's 2.44B float32 parameters are about 10 GB.
Variables are created with zeros initializers (`--zeros`, the default) so
the count does not wait on 2.44B truncated-normal draws; initializers do
not change shapes.

    bazel run //bench:param_count -- --variants=coatnet-5,coatnet-6
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

from absl import app, flags

# Table 4 (CoAtNet-0 to 3), Table 5 (CoAtNet-4, 5) and Table 6 (CoAtNet-6,
# 7), in parameters.
PAPER_PARAMS = {
    "coatnet-0": 25e6,
    "coatnet-1": 42e6,
    "coatnet-2": 75e6,
    "coatnet-3": 168e6,
    "coatnet-4": 275e6,
    "coatnet-5": 688e6,
    "coatnet-6": 1.47e9,
    "coatnet-7": 2.44e9,
}

flags.DEFINE_list(
    "variants",
    ["coatnet-5", "coatnet-6", "coatnet-7"],
    f"Variants to count, of {sorted(PAPER_PARAMS)}.",
)
flags.DEFINE_integer("image_size", 224, "Input resolution.")
flags.DEFINE_integer("num_classes", 1000, "Classifier width.")
flags.DEFINE_boolean(
    "zeros", True, "Create variables with zeros (fast); shapes are the same."
)
FLAGS = flags.FLAGS


def count(name: str, image_size: int, num_classes: int, zeros: bool) -> int:
    """Elements of every variable of `name` after one traced call.

    Args:
      name: a coatnet_tf variant.
      image_size: square input side.
      num_classes: classifier width.
      zeros: replace every initializer by zeros.

    Returns:
      The parameter count (trainable and BatchNorm statistics).
    """
    import tf_keras

    import coatnet_tf

    model = coatnet_tf.create_model(name, num_classes, image_size)
    if zeros:
        # Initializers are read when `build` creates the variables, which
        # happens in the trace below, so swapping them here is in time.
        for layer in model._flatten_layers(include_self=False):
            for attr in dir(layer):
                if attr.endswith("_initializer") and not attr.startswith("_"):
                    value = getattr(layer, attr, None)
                    if isinstance(value, tf_keras.initializers.Initializer):
                        setattr(layer, attr, tf_keras.initializers.Zeros())
    coatnet_tf.forward_graph(model)  # Builds the variables; no step runs.
    return model.count_params()


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    unknown = sorted(set(FLAGS.variants) - set(PAPER_PARAMS))
    if unknown:
        raise app.UsageError(
            f"--variants: unknown {unknown}; choose from "
            f"{sorted(PAPER_PARAMS)}."
        )
    result = {}
    for name in FLAGS.variants:
        start = time.perf_counter()
        params = count(name, FLAGS.image_size, FLAGS.num_classes, FLAGS.zeros)
        gc.collect()  # The model is gone: free its ~4 bytes per parameter.
        paper = PAPER_PARAMS[name]
        result[name] = {
            "params": params,
            "paper": paper,
            "ratio": params / paper,
            "within_1_percent": abs(params / paper - 1) <= 0.01,
            "build_s": round(time.perf_counter() - start, 1),
        }
        print(
            f"{name}: {params:,} ({params / paper:.4f} of paper)",
            file=sys.stderr,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
