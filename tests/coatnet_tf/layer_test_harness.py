"""Checks every coatnet_tf layer must pass, in one call per layer.

`LayerTestCase.run_layer_test` builds a layer, runs it, and checks
- the output shape (and dtype, float32 by default);
- the config round trip: `from_config(get_config())` and Keras
  (de)serialization by registered name give a layer with the same config
  that computes the same output from the same weights;
- mixed_bfloat16: float32 variables, outputs in the expected dtype, finite,
  and close to the float32 output;
- SavedModel: a `tf.saved_model.save`d and reloaded call gives the same
  output;
- optionally XLA: the forward pass compiles with `jit_compile=True` and
  matches the eager output; the training-mode pass compiles as well.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import coatnet_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)


class LayerTestCase(tf.test.TestCase, parameterized.TestCase):
    """Base class with the shared layer checks."""

    def tearDown(self):
        tf_keras.mixed_precision.set_global_policy("float32")
        super().tearDown()

    def _inputs(self, input_shape, seed=0):
        return tf.random.stateless_normal(input_shape, seed=[seed, 1])

    def run_layer_test(
        self,
        layer_cls,
        init_kwargs,
        input_shape,
        expected_output_shape,
        call_kwargs=None,
        expected_dtype=tf.float32,
        expected_bf16_dtype=tf.bfloat16,
        bf16_atol=0.25,
        run_xla=False,
    ):
        """Runs all shared checks on one layer configuration.

        Args:
          layer_cls: the layer class.
          init_kwargs: constructor arguments.
          input_shape: full input shape, batch included.
          expected_output_shape: full output shape.
          call_kwargs: extra call arguments (e.g. {"training": False}).
          expected_dtype: output dtype under float32.
          expected_bf16_dtype: output dtype under mixed_bfloat16.
          bf16_atol: tolerance between bf16 and float32 outputs.
          run_xla: also compile the forward pass with XLA.
        """
        call_kwargs = call_kwargs or {}
        x = self._inputs(input_shape)
        layer = layer_cls(**init_kwargs)
        y = layer(x, **call_kwargs)
        self.assertEqual(tuple(y.shape), tuple(expected_output_shape))
        self.assertEqual(y.dtype, expected_dtype)
        self.assertTrue(np.all(np.isfinite(y.numpy())))

        self._check_config_round_trip(layer, x, y, call_kwargs)
        self._check_mixed_precision(
            layer_cls,
            init_kwargs,
            layer,
            x,
            y,
            call_kwargs,
            expected_bf16_dtype,
            bf16_atol,
        )
        self._check_saved_model(layer, x, y, call_kwargs)
        if run_xla:
            fn = tf.function(
                lambda t: layer(t, **call_kwargs), jit_compile=True
            )
            self.assertAllClose(fn(x), y, atol=1e-4, rtol=1e-4)
            if "training" in call_kwargs:
                # Training mode (batch statistics, drop path) compiles too.
                train = tf.function(
                    lambda t: layer(t, **{**call_kwargs, "training": True}),
                    jit_compile=True,
                )
                out = train(x).numpy()
                self.assertEqual(out.shape, tuple(expected_output_shape))
                self.assertTrue(np.all(np.isfinite(out)))

    def _check_config_round_trip(self, layer, x, y, call_kwargs):
        config = layer.get_config()
        clone = layer.__class__.from_config(config)
        self.assertEqual(clone.get_config(), config)
        clone(x, **call_kwargs)
        clone.set_weights(layer.get_weights())
        self.assertAllClose(clone(x, **call_kwargs), y, atol=1e-6)

        serialized = tf_keras.saving.serialize_keras_object(layer)
        self.assertStartsWith(serialized["registered_name"], "coatnet>")
        revived = tf_keras.saving.deserialize_keras_object(serialized)
        self.assertIsInstance(revived, layer.__class__)
        self.assertEqual(revived.get_config(), config)

    def _check_mixed_precision(
        self,
        layer_cls,
        init_kwargs,
        layer,
        x,
        y,
        call_kwargs,
        expected_dtype,
        atol,
    ):
        tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            mixed = layer_cls(**init_kwargs)
            mixed(x, **call_kwargs)
            mixed.set_weights(layer.get_weights())
            out = mixed(x, **call_kwargs)
        finally:
            tf_keras.mixed_precision.set_global_policy("float32")
        self.assertEqual(out.dtype, expected_dtype)
        for var in mixed.weights:
            self.assertEqual(var.dtype, tf.float32, var.name)
        out = tf.cast(out, tf.float32).numpy()
        self.assertTrue(np.all(np.isfinite(out)))
        self.assertAllClose(out, y, atol=atol, rtol=0.05)

    def _check_saved_model(self, layer, x, y, call_kwargs):
        module = tf.Module()
        module.layer = layer
        module.call = tf.function(
            lambda t: layer(t, **call_kwargs),
            input_signature=[tf.TensorSpec([None, *x.shape[1:]], x.dtype)],
        )
        path = os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()), "sm")
        tf.saved_model.save(module, path)
        loaded = tf.saved_model.load(path)
        self.assertAllClose(loaded.call(x), y, atol=1e-6)
