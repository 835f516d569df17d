"""CLI: prints `coatnet_tf.describe.describe` of a variant as JSON.

bazel run //coatnet_tf:describe -- --variant=coatnet-3 --image_size=384
bazel run //coatnet_tf:describe -- --variant=coatnet-0 --flops
"""

from __future__ import annotations

import json

from absl import app, flags

from coatnet_tf import config as config_lib
from coatnet_tf.describe import describe

flags.DEFINE_string("variant", "coatnet-0", "Variant name.")
flags.DEFINE_integer("num_classes", 1000, "Classifier width.")
flags.DEFINE_integer("image_size", 224, "Square input side.")
flags.DEFINE_boolean("flops", False, "Count forward multiply-adds.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    if FLAGS.variant not in config_lib.list_variants():
        raise app.UsageError(
            f"--variant={FLAGS.variant}: choose from "
            f"{config_lib.list_variants()}."
        )
    print(
        json.dumps(
            describe(
                FLAGS.variant, FLAGS.num_classes, FLAGS.image_size, FLAGS.flops
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    app.run(main)
