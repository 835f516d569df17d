"""`//configs:show`: a recipe with overrides, as JSON."""

import json

import tensorflow as tf
from absl import app
from absl.testing import flagsaver

from configs import show


class ShowTest(tf.test.TestCase):
    def test_recipe_and_override(self):
        plain = json.loads(show.render("pretrain_i21k", []))
        self.assertEqual(plain["model"]["variant"], "coatnet-2")
        self.assertEqual(plain["loss"]["kind"], "sigmoid")
        changed = json.loads(
            show.render("pretrain_i21k", ["model.variant=coatnet-3"])
        )
        self.assertEqual(changed["model"]["variant"], "coatnet-3")
        changed["model"]["variant"] = "coatnet-2"
        self.assertEqual(changed, plain)

    def test_bad_override_names_the_field(self):
        with self.assertRaisesRegex(ValueError, "no_such_field"):
            show.render("tiny", ["model.no_such_field=1"])
        with flagsaver.flagsaver(config="tiny", set=["model.no_such_field=1"]):
            with self.assertRaisesRegex(app.UsageError, "no_such_field"):
                show.main(["show"])


if __name__ == "__main__":
    tf.test.main()
