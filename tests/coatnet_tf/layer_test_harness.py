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

`LayerTestCase.run_kernels_test` checks a fused layer
(`coatnet_tf.kernels.fused`) against its reference layer: the same config
and variables, and the same outputs in inference and training, the same
gradients (input and every trainable variable) and the same BatchNorm
moving statistics after a training call: equal in float32, and in
mixed_bfloat16 no further from the float32 values than the reference.
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
                lambda t: layer(t, **call_kwargs),
                jit_compile=True,
                autograph=False,
            )
            self.assertAllClose(fn(x), y, atol=1e-4, rtol=1e-4)
            if "training" in call_kwargs:
                # Training mode (batch statistics, drop path) compiles too.
                train = tf.function(
                    lambda t: layer(t, **{**call_kwargs, "training": True}),
                    jit_compile=True,
                    autograph=False,
                )
                out = train(x).numpy()
                self.assertEqual(out.shape, tuple(expected_output_shape))
                self.assertTrue(np.all(np.isfinite(out)))

    def run_kernels_test(
        self,
        reference_cls,
        fused_cls,
        init_kwargs,
        input_shape,
        noise_state=None,
        atol=1e-4,
        bf16_factor=4.0,
    ):
        """Checks that `fused_cls` computes what `reference_cls` does.

        Both layers get the same weights, with BatchNorm moving statistics
        and affine parameters away from their initial values so that
        folding them is exercised. In float32 outputs, gradients and moving
        statistics must agree to `atol` (absolute and relative). In
        mixed_bfloat16 both paths round at different points, so each is
        measured against the float32 reference: the fused path's error
        (RMS) may be at most `bf16_factor` times the reference path's own,
        plus 3% of the quantity's RMS (a few bfloat16 roundings, 0.4%
        each, accumulated in a sum). (The fused MBConv folds the SE gate
        into a bfloat16 matmul, whose gate gradient sums over the pixels
        in bfloat16 products: ~3x the reference's error there.)

        Args:
          reference_cls: the reference layer class.
          fused_cls: its fused subclass.
          init_kwargs: constructor arguments of both.
          input_shape: full input shape, batch included.
          noise_state: a `coatnet_tf.NoiseState` given to both layers'
            stochastic depth, so that training drops the same examples.
          atol: float32 tolerance.
          bf16_factor: allowed mixed_bfloat16 error, relative to the
            reference path's.
        """
        self.assertTrue(issubclass(fused_cls, reference_cls))
        x = self._inputs(input_shape) * 1.5 + 0.5
        weights, results = None, {}
        for policy in ("float32", "mixed_bfloat16"):
            tf_keras.mixed_precision.set_global_policy(policy)
            try:
                # One name: variable names follow it.
                pair = [
                    cls(**init_kwargs, name="layer")
                    for cls in (reference_cls, fused_cls)
                ]
                for layer in pair:
                    layer(x[:1], training=False)
                    if noise_state is not None:
                        for sub in _sublayers(layer):
                            if hasattr(sub, "noise_state"):
                                sub.noise_state = noise_state
                weights = weights or self._distinct_weights(pair[0])
                for layer in pair:
                    layer.set_weights(weights)
                ref, fused = pair
                self.assertEqual(fused.get_config(), ref.get_config())
                self.assertEqual(
                    [(v.name, v.shape) for v in fused.weights],
                    [(v.name, v.shape) for v in ref.weights],
                )
                results[policy] = [
                    self._run_both_modes(layer, x) for layer in pair
                ]
            finally:
                tf_keras.mixed_precision.set_global_policy("float32")
        names = results["float32"][0]["names"]
        truth = results["float32"][0]["values"]
        for name, want, got in zip(
            names, truth, results["float32"][1]["values"]
        ):
            msg = f"{fused_cls.__name__} float32: {name}"
            self.assertAllClose(got, want, atol=atol, rtol=atol, msg=msg)
        for name, want, ref, got in zip(
            names,
            truth,
            results["mixed_bfloat16"][0]["values"],
            results["mixed_bfloat16"][1]["values"],
        ):
            msg = f"{fused_cls.__name__} mixed_bfloat16: {name}"
            self.assertTrue(np.all(np.isfinite(got)), msg)
            allowed = bf16_factor * _rms(ref - want) + 0.03 * _rms(want)
            self.assertLessEqual(_rms(got - want), allowed + 1e-7, msg)

    @staticmethod
    def _distinct_weights(layer):
        """The layer's weights, BatchNorms made non-trivial."""
        values = []
        for i, var in enumerate(layer.weights):
            shape, name = var.shape, var.name
            seed = [i, 17]
            if "moving_variance" in name or "gamma" in name:
                value = tf.random.stateless_uniform(shape, seed, 0.5, 1.5)
            elif "moving_mean" in name or "beta" in name:
                value = 0.3 * tf.random.stateless_normal(shape, seed)
            else:
                value = var.numpy()
            values.append(np.asarray(value, np.float32))
        return values

    @staticmethod
    def _run_both_modes(layer, x):
        """Inference output, training output, gradients and statistics."""
        names, values = ["inference output"], []
        values.append(tf.cast(layer(x, training=False), tf.float32).numpy())
        variables = layer.trainable_variables
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=True), tf.float32)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x] + variables)
        names.append("training output")
        values.append(y.numpy())
        for var, grad in zip(["input"] + variables, grads):
            names.append(f"gradient of {getattr(var, 'name', var)}")
            values.append(tf.convert_to_tensor(grad).numpy())
        for var in layer.non_trainable_weights:
            names.append(f"{var.name} after a training step")
            values.append(var.numpy())
        return {"names": names, "values": values}

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
            autograph=False,
        )
        path = os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()), "sm")
        tf.saved_model.save(module, path)
        loaded = tf.saved_model.load(path)
        self.assertAllClose(loaded.call(x), y, atol=1e-6)


def _rms(values) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def _sublayers(layer):
    """`layer` and every layer nested in it."""
    return [layer, *layer.submodules]
