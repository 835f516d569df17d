"""Parameter counts of the paper's variants at 224 with 1000 classes."""

import numpy as np
import tensorflow as tf
from absl import logging
from absl.testing import parameterized

import coatnet_tf

# Table 4 (CoAtNet-0 to 3) and Table 5 (CoAtNet-4), in parameters.
PAPER_PARAMS = {
    "coatnet-0": 25e6,
    "coatnet-1": 42e6,
    "coatnet-2": 75e6,
    "coatnet-3": 168e6,
    "coatnet-4": 275e6,
}


def count_params(name, **overrides):
    """Builds the variables with one trace; no forward pass runs."""
    model = coatnet_tf.create_model(name, 1000, 224, **overrides)
    coatnet_tf.forward_graph(model)
    return model.count_params()


class ParameterCountTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*PAPER_PARAMS)
    def test_within_one_percent_of_paper(self, name):
        count = count_params(name)
        logging.info("%s: %d parameters at 224, 1000 classes", name, count)
        self.assertBetween(
            count, 0.99 * PAPER_PARAMS[name], 1.01 * PAPER_PARAMS[name]
        )

    def test_pre_logits_is_one_dense_layer(self):
        # The paper's counts include a D4 x D4 pre-logits dense layer; it
        # is the whole difference to pooling straight into the classifier.
        with_pre = count_params("coatnet-0")
        without = count_params("coatnet-0", pre_logits=False)
        self.assertEqual(with_pre - without, 768 * 768 + 768)

    def test_bias_tables_grow_with_resolution(self):
        # Only the S3 and S4 tables depend on the resolution: 224 -> 384
        # turns 27x27 into 47x47 and 13x13 into 23x23 per head.
        def tables(size):
            model = coatnet_tf.create_model("coatnet-0", 1000, size)
            trace = tf.function(lambda x: model(x), autograph=False)
            trace.get_concrete_function(
                tf.TensorSpec([1, size, size, 3], tf.float32)
            )
            return model, sum(
                int(np.prod(a.relative_position_bias.shape))
                for a in model.attention_layers()
            )

        small, small_tables = tables(224)
        large, large_tables = tables(384)
        self.assertEqual(small_tables, 5 * 12 * 27**2 + 2 * 24 * 13**2)
        self.assertEqual(large_tables, 5 * 12 * 47**2 + 2 * 24 * 23**2)
        self.assertEqual(
            large.count_params() - small.count_params(),
            large_tables - small_tables,
        )


if __name__ == "__main__":
    tf.test.main()
