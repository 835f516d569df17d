"""The serving SavedModel: signatures, label asset and warmup requests.

Signature contract (N = batch, K = min(top_k, classes), C = classes):

  serving_default  (Predict)
    in   image_bytes   string  [N]           encoded JPEG/PNG/GIF/BMP
  image_tensor     (Predict)
    in   images        uint8   [N, H, W, 3]  RGB, any H and W
  both return
    probabilities  float32 [N, C]  softmax, or sigmoid when multi-label
    top_k_ids      int32   [N, K]  best first
    top_k_labels   string  [N, K]  class names of top_k_ids
    top_k_scores   float32 [N, K]  probabilities of top_k_ids
  classify         (Classify; method tensorflow/serving/classify)
    in   inputs        string  [N]           serialized tf.Example with
                                             `image/encoded`
    out  classes       string  [N, K]        class names, best first
         scores        float32 [N, K]

Before decoding, every signature refuses a batch of more than
`max_batch_size` inputs and an image whose header declares more than
`max_image_pixels` pixels, or of an unknown format, with
InvalidArgumentError (TF Serving: INVALID_ARGUMENT); see `image_limits`.
The limits are set at export and recorded in the exported Model's
properties.

Every signature preprocesses with `components.preprocessing` (decode,
center crop, resize, normalize), the function the Evaluator used. The class
names are the asset `assets/labels.txt`, read into a lookup table at load.
Only the variables the model's traced forward reads are saved, not the
Keras object, so loading needs neither Keras nor coatnet_tf. The model is
frozen for inference first (`coatnet_tf.freeze_for_inference`): what
inference derives from the weights alone is stored, computed once, in
place of the weights it came from.

The model inside computes in the export's serving precision
(`SERVING_PRECISIONS`): "float32", or "bfloat16", the model built under
tf_keras's `mixed_bfloat16` policy (bfloat16 matmuls, convolutions and
activations; float32 norm statistics, classifier and softmax). A
bfloat16 export stores each weight the model reads in bfloat16 as
bfloat16, the value the mixed model would cast it to on every call
(`store_read_dtype`); the other weights are the trained float32 values,
unchanged. The signature contract above is the same for both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
)
from tf_keras.src.mixed_precision import autocast_variable

import coatnet_tf
from artifacts import examples as examples_lib
from artifacts import model as model_io
from artifacts import model_store
from components import preprocessing
from components.exporter import image_limits

PREDICT_SIGNATURE = "serving_default"
IMAGE_TENSOR_SIGNATURE = "image_tensor"
CLASSIFY_SIGNATURE = "classify"
SIGNATURES = (PREDICT_SIGNATURE, IMAGE_TENSOR_SIGNATURE, CLASSIFY_SIGNATURE)
IMAGE_BYTES_KEY = "image_bytes"
IMAGES_KEY = "images"
CLASSIFY_INPUT_KEY = "inputs"
PREDICT_OUTPUTS = ("probabilities", "top_k_ids", "top_k_labels", "top_k_scores")
CLASSIFY_OUTPUTS = ("classes", "scores")
CLASSIFY_METHOD = "tensorflow/serving/classify"
# The export's compute precisions, and the tf_keras policy of each.
SERVING_PRECISIONS = ("float32", "bfloat16")
_KERAS_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
# Images of one request decoded at once (tf.map_fn's graph default is 10):
# a request's decode memory is at most this many images at the limit.
DECODE_PARALLELISM = 4


class _Untracked:
    """Hides an object from tf.Module's automatic dependency tracking."""

    def __init__(self, value):
        self.value = value


def _graph_function(fn, spec: tf.TensorSpec):
    """`fn` as a tf.function of one input, traced without autograph."""
    return tf.function(fn, input_signature=[spec], autograph=False)


class ServingModule(tf.Module):
    """The exported graph: preprocessing, the model and the label lookup."""

    def __init__(
        self,
        model: tf_keras.Model,
        spec: model_io.ModelSpec,
        labels_path: str,
        top_k: int = 5,
        max_image_pixels: int = image_limits.DEFAULT_MAX_IMAGE_PIXELS,
        max_batch_size: int = image_limits.DEFAULT_MAX_BATCH_SIZE,
    ):
        """Wraps a built model.

        Args:
          model: the model with its serving weights loaded. It is frozen
            for inference (`coatnet_tf.freeze_for_inference`): its layers
            refuse to train afterwards.
          spec: its spec (resolution, classes, multi-label).
          labels_path: the labels file to ship as an asset.
          top_k: how many classes the top-k outputs hold.
          max_image_pixels: images declaring more pixels are refused.
          max_batch_size: requests of more inputs are refused.
        """
        super().__init__()
        # What inference derives from the weights alone (the attention's
        # per-head kernels and relative bias, the pre-norms' gamma and
        # beta in the compute dtype) is computed here once, not on every
        # call.
        coatnet_tf.freeze_for_inference(model)
        # The Keras model is held untracked and only the variables its
        # traced forward reads are tracked (below): the SavedModel then
        # holds those weights and these signatures, without Keras'
        # per-layer tracing or metadata, nor the weights that freezing
        # made unread.
        self._holder = _Untracked(model)
        self.image_size = spec.image_size
        self.multi_label = spec.multi_label
        self.top_k = max(1, min(top_k, spec.num_classes))
        self.max_image_pixels = int(max_image_pixels)
        self.max_batch_size = int(max_batch_size)
        self.vocabulary = tf.saved_model.Asset(labels_path)
        self.label_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocabulary,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        # The model is traced once, for preprocessed images, and every
        # signature calls that one function: three signatures cost one
        # trace, and the SavedModel holds the model's graph once. The
        # signature functions are held untracked too: as attributes,
        # `tf.saved_model.save` would trace each again for the object
        # graph. No autograph: nothing here branches on a tensor, and
        # converting every layer call makes tracing several times slower.
        size = self.image_size
        string_batch = tf.TensorSpec([None], tf.string)
        self._classifier = _Untracked(
            _graph_function(self._outputs, tf.TensorSpec([None, size, size, 3]))
        )
        # In the model's order: the traced function's own order differs
        # from one process to the next, and the SavedModel's bytes with it.
        traced = self._classifier.value.get_concrete_function()
        read = {id(v.handle) for v in traced.variables}
        self.model_variables = [
            v for v in model.variables if id(v.handle) in read
        ]
        if len(self.model_variables) != len(read):
            raise ValueError(
                "The model's forward reads variables that are not the "
                "model's own; they would be missing from the SavedModel."
            )
        self._functions = _Untracked(
            {
                PREDICT_SIGNATURE: _graph_function(
                    self._serve_image_bytes, string_batch
                ),
                IMAGE_TENSOR_SIGNATURE: _graph_function(
                    self._serve_images,
                    tf.TensorSpec([None, None, None, 3], tf.uint8),
                ),
                CLASSIFY_SIGNATURE: _graph_function(
                    self._classify, string_batch
                ),
            }
        )

    def _classify_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classifier.value(images)

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        model = self._holder.value
        logits = tf.cast(model(images, training=False), tf.float32)
        if self.multi_label:
            probabilities = tf.math.sigmoid(logits)
        else:
            probabilities = tf.nn.softmax(logits, axis=-1)
        scores, ids = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "top_k_ids": ids,
            "top_k_labels": self.label_table.lookup(tf.cast(ids, tf.int64)),
            "top_k_scores": scores,
        }

    def _from_bytes(self, image_bytes: tf.Tensor) -> tf.Tensor:
        size = self.image_size

        def one(encoded):
            # The decode must not start before its header check passed.
            check = image_limits.check_image(encoded, self.max_image_pixels)
            with tf.control_dependencies([check]):
                encoded = tf.identity(encoded)
            return preprocessing.preprocess_for_eval(encoded, size)

        with tf.control_dependencies(
            [image_limits.check_batch(image_bytes, self.max_batch_size)]
        ):
            image_bytes = tf.identity(image_bytes)
        return tf.map_fn(
            one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            parallel_iterations=DECODE_PARALLELISM,
        )

    def serve_image_bytes(self, image_bytes: tf.Tensor) -> dict:
        """`serving_default`: encoded images in, the outputs out."""
        return self._functions.value[PREDICT_SIGNATURE](image_bytes)

    def serve_images(self, images: tf.Tensor) -> dict:
        """`image_tensor`: uint8 images in, the outputs out."""
        return self._functions.value[IMAGE_TENSOR_SIGNATURE](images)

    def classify(self, inputs: tf.Tensor) -> dict:
        """`classify`: serialized tf.Examples in, classes and scores out."""
        return self._functions.value[CLASSIFY_SIGNATURE](inputs)

    def _serve_image_bytes(self, image_bytes):
        return self._classify_images(self._from_bytes(image_bytes))

    def _serve_images(self, images):
        size = self.image_size
        with tf.control_dependencies(
            [
                image_limits.check_batch(images, self.max_batch_size),
                image_limits.check_image_tensor(images, self.max_image_pixels),
            ]
        ):
            images = tf.identity(images)
        preprocessed = tf.map_fn(
            lambda image: preprocessing.preprocess_image_for_eval(image, size),
            images,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            parallel_iterations=DECODE_PARALLELISM,
        )
        return self._classify_images(preprocessed)

    def _classify(self, inputs):
        with tf.control_dependencies(
            [image_limits.check_batch(inputs, self.max_batch_size)]
        ):
            inputs = tf.identity(inputs)
        parsed = tf.io.parse_example(inputs, examples_lib.IMAGE_SPEC)
        out = self._classify_images(
            self._from_bytes(parsed[examples_lib.IMAGE_ENCODED])
        )
        return {"classes": out["top_k_labels"], "scores": out["top_k_scores"]}

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signature map, keyed so the input names are the contract's."""
        return {
            name: function.get_concrete_function()
            for name, function in self._functions.value.items()
        }


def load_serving_model(uri: str, precision: str) -> tf_keras.Model:
    """Rebuilds a Model artifact's model to compute in `precision`.

    The layers take the global tf_keras policy when they are created, so
    the model is built under the precision's policy, which is then put
    back. Under `mixed_bfloat16` the variables stay float32, so the
    trained checkpoint loads into them bit for bit (and `load_model`
    asserts every value was consumed).

    Args:
      uri: the trained Model artifact's root.
      precision: one of `SERVING_PRECISIONS`.

    Returns:
      The built model with the artifact's serving weights.

    Raises:
      ValueError: an unknown precision.
    """
    if precision not in _KERAS_POLICY:
        raise ValueError(
            f"serving precision {precision!r}; expected one of "
            f"{SERVING_PRECISIONS}."
        )
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(_KERAS_POLICY[precision])
    try:
        model, _, _ = model_io.load_model(uri)
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)
    if precision == "bfloat16":
        store_read_dtype(model, tf.bfloat16)
    return model


def store_read_dtype(model: tf_keras.Model, dtype: tf.DType) -> int:
    """Stores each weight that `model` reads in `dtype` as `dtype`.

    Under a mixed policy a layer's kernels stay float32 variables, each
    wrapped so that a read inside the layer's call casts it to the
    compute dtype: every call of the served graph casts every kernel,
    24 M values per call for coatnet-0 whatever the batch. Here each
    wrapped variable's float32 variable is replaced by one holding that
    cast, under the same name: the wrapper then reads it without a cast,
    the model computes the same bits, and the SavedModel stores those
    weights at half the size. Weights read in float32 (norms, the
    float32 classifier) are not wrapped and stay as they are. Without
    the casts coatnet-0's bfloat16 export served batch 1 at a p50 of
    34.0 against 37.4 ms, and batch 16 1.02x faster (docs/performance.md,
    "The bfloat16 export").

    Call it after the weights are loaded and before the model is traced.

    Args:
      model: a model built under a mixed policy, its weights loaded.
      dtype: the policy's compute dtype.

    Returns:
      How many variables now hold `dtype`.
    """
    count = 0
    for variable in model.variables:
        if not isinstance(variable, autocast_variable.AutoCastVariable):
            continue
        stored = variable._variable
        if stored.dtype == dtype:
            continue
        # The wrapper reads `_variable`; every layer and weight list holds
        # the wrapper, so swapping what it wraps reaches all of them.
        variable._variable = tf.Variable(
            tf.cast(stored, dtype),
            trainable=stored.trainable,
            name=stored.name.split(":")[0],
        )
        count += 1
    return count


def save(module: ServingModule, export_dir: str) -> None:
    """Saves the SavedModel and marks `classify` as a Classify signature.

    `tf.saved_model.save` writes every signature with the Predict method
    name; TF Serving started with --enable_signature_method_name_check then
    refuses Classify requests, so the method name is rewritten here.
    """
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    proto = model_store.read_saved_model(export_dir)
    for meta_graph in proto.meta_graphs:
        if CLASSIFY_SIGNATURE in meta_graph.signature_def:
            meta_graph.signature_def[
                CLASSIFY_SIGNATURE
            ].method_name = CLASSIFY_METHOD
    model_store.write_saved_model(export_dir, proto)
    _refresh_fingerprint(export_dir)


def _refresh_fingerprint(export_dir: str) -> None:
    """Rewrites fingerprint.pb so its hashes cover the edited graph.

    The fingerprint (what the Pusher compares to skip re-pushing the same
    model) hashes the signatures; after the method-name edit it must be
    recomputed. TF's own writer is only exposed through its pywrap module.
    """
    from tensorflow.python.saved_model.pywrap_saved_model import (
        fingerprinting,
    )

    with tf.io.gfile.GFile(
        os.path.join(export_dir, "fingerprint.pb"), "wb"
    ) as f:
        f.write(fingerprinting.CreateFingerprintDef(export_dir))


def synthetic_images(image_size: int, count: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields plus noise) of varied shapes.

    Used for warmup requests when no example images are given; sizes range
    around the model's resolution, landscape and portrait, because serving
    traffic is not pre-cropped.
    """
    rng = np.random.default_rng(seed)
    shapes = [
        (image_size + 32, image_size + 32),
        (image_size + 32, 2 * image_size),
        (2 * image_size, image_size + 16),
    ]
    out = []
    for i in range(count):
        h, w = shapes[i % len(shapes)]
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-200, 200, size=(2, 3))
        image = base + y[..., None] * slope[0] + x[..., None] * slope[1]
        image += rng.normal(0, 12, size=image.shape)
        image = np.clip(image, 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(image, quality=90).numpy())
    return out


def uint8_batch(encoded: Sequence[bytes], image_size: int) -> np.ndarray:
    """Decodes images and resizes them to one shape for `image_tensor`."""
    side = image_size + preprocessing.CROP_PADDING
    images = [
        tf.image.resize(preprocessing.decode_image(b), [side, side])
        for b in encoded
    ]
    return np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)


def example_bytes(encoded: Sequence[bytes]) -> list[bytes]:
    """Serialized tf.Examples holding `image/encoded`, for Classify."""
    return examples_lib.image_examples(encoded)


def warmup_logs(
    model_name: str,
    images: Sequence[bytes],
    image_size: int,
    batch_sizes: Sequence[int],
) -> list[prediction_log_pb2.PredictionLog]:
    """Warmup PredictionLogs: every signature at every batch size.

    Args:
      model_name: put in each request's model spec.
      images: encoded images; batches cycle through them.
      image_size: the model's resolution.
      batch_sizes: e.g. (1, 8): one record per signature and size.

    Returns:
      The records (3 per batch size).
    """
    logs = []
    for size in batch_sizes:
        batch = [images[i % len(images)] for i in range(size)]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = PREDICT_SIGNATURE
        request.inputs[IMAGE_BYTES_KEY].CopyFrom(
            tf.make_tensor_proto(batch, dtype=tf.string)
        )
        logs.append(_predict_log(request))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = IMAGE_TENSOR_SIGNATURE
        request.inputs[IMAGES_KEY].CopyFrom(
            tf.make_tensor_proto(uint8_batch(batch, image_size))
        )
        logs.append(_predict_log(request))
        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name = model_name
        classify.model_spec.signature_name = CLASSIFY_SIGNATURE
        for serialized in example_bytes(batch):
            classify.input.example_list.examples.add().ParseFromString(
                serialized
            )
        logs.append(
            prediction_log_pb2.PredictionLog(
                classify_log=prediction_log_pb2.ClassifyLog(request=classify)
            )
        )
    return logs


def _predict_log(request) -> prediction_log_pb2.PredictionLog:
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
