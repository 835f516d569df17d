"""The serving model store: versions, warmup records, the push record."""

import os

import tensorflow as tf
from absl.testing import absltest
from tensorflow_serving.apis import prediction_log_pb2

from artifacts import core, model_store


class _Tiny(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        return {"y": x * 2.0}


class ModelStoreTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        self.saved_model = os.path.join(self.root, "export")
        tf.saved_model.save(_Tiny(), self.saved_model)
        self.model_dir = os.path.join(self.root, "store", "m")

    def test_only_finished_versions_are_ready(self):
        model_store.write_version(self.model_dir, self.saved_model, 1)
        # A version still being copied to an object store: no
        # saved_model.pb yet.
        os.makedirs(os.path.join(self.model_dir, "2", "variables"))
        os.makedirs(os.path.join(self.model_dir, ".tmp-3-99"))
        self.assertEqual(model_store.list_versions(self.model_dir), [1, 2])
        self.assertEqual(model_store.ready_versions(self.model_dir), [1])
        self.assertEqual(model_store.next_version(self.model_dir), 3)
        self.assertTrue(
            model_store.same_model(
                os.path.join(self.model_dir, "1"), self.saved_model
            )
        )

    def test_saved_model_proto_round_trips(self):
        proto = model_store.read_saved_model(self.saved_model)
        proto.meta_graphs[0].meta_info_def.tags.append("extra")
        model_store.write_saved_model(self.saved_model, proto)
        again = model_store.read_saved_model(self.saved_model)
        self.assertIn("extra", again.meta_graphs[0].meta_info_def.tags)

    def test_warmup_records_round_trip_within_the_limit(self):
        self.assertEqual(model_store.read_warmup(self.saved_model), [])
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.model_spec.name = "m"
        model_store.write_warmup(self.saved_model, [log, log])
        read = model_store.read_warmup(self.saved_model)
        self.assertLen(read, 2)
        self.assertEqual(read[0].predict_log.request.model_spec.name, "m")
        too_many = [log] * (model_store.MAX_WARMUP_RECORDS + 1)
        with self.assertRaisesRegex(ValueError, "at most"):
            model_store.write_warmup(self.saved_model, too_many)

    def test_pushed_model_record_round_trips(self):
        artifact = core.Artifact(core.PUSHED_MODEL, self.root)
        push = model_store.PushedModel(True, "m", 4, "/store/m/4", "Pushed.")
        push.record(artifact)
        self.assertEqual(artifact.properties["pushed_version"], "4")
        self.assertEqual(model_store.PushedModel.of(artifact), push)
        refused = model_store.PushedModel(False, "m", None, "", "No.")
        refused.record(artifact)
        self.assertEqual(model_store.PushedModel.of(artifact), refused)


if __name__ == "__main__":
    absltest.main()
