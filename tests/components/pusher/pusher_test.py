"""The Pusher: gating, versioning, keep-K, and never a half-written version.

The pushed SavedModels are small real ones (a tf.Module with one variable):
the Pusher only copies files, so it needs no classifier, and real
SavedModels carry the fingerprints it compares.
"""

import os
import time
from unittest import mock

import tensorflow as tf

from artifacts import blessing as blessing_lib
from artifacts import model as model_io
from artifacts import model_store, publish
from components import base
from components.pusher import component as pusher


class _Tiny(tf.Module):
    def __init__(self, value):
        super().__init__()
        self.w = tf.Variable(value)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        return {"y": x * self.w}


class PusherTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        self.serving_base = os.path.join(self.root, "serving")
        self.model_dir = os.path.join(self.serving_base, "coatnet")

    def _model(self, name, value=1.0, exported=True) -> base.Artifact:
        uri = os.path.join(self.root, name)
        module = _Tiny(value)
        tf.saved_model.save(
            module,
            os.path.join(uri, model_io.SERVING_DIR),
            signatures={"serving_default": module.__call__},
        )
        # As the Exporter records it: the trained Model it came from.
        artifact = base.Artifact(
            base.MODEL,
            uri,
            {"exported": int(exported), "source_model": f"{uri}-trained"},
        )
        artifact.write()
        return artifact

    def _blessing(self, name, blessed, model, infra=False) -> base.Artifact:
        """A blessing of `model` (None: one recording no model)."""
        uri = os.path.join(self.root, name)
        tf.io.gfile.makedirs(uri)
        artifact = base.Artifact(base.MODEL_BLESSING, uri)
        if infra:
            blessing_lib.write(artifact, blessed, blessing_lib.INFRA, "test")
            if model is not None:
                artifact.properties["model"] = model.uri
        else:
            blessing_lib.write(artifact, blessed)
            if model is not None:
                artifact.properties["current_model"] = model.properties[
                    "source_model"
                ]
        artifact.write()
        return artifact

    def _push(self, model, blessing_artifact=None, infra=None, **config):
        if blessing_artifact is None:
            name = f"blessing-{os.path.basename(model.uri)}"
            blessing_artifact = self._blessing(name, True, model)
        inputs = {"model": model, "blessing": blessing_artifact}
        if infra is not None:
            inputs["infra_blessing"] = infra
        count = len(tf.io.gfile.glob(os.path.join(self.root, "pushed*")))
        outputs = base.execute(
            pusher.Pusher(),
            inputs,
            {"pushed_model": os.path.join(self.root, f"pushed{count}")},
            pusher.PusherConfig(serving_base=self.serving_base, **config),
        )
        return outputs["pushed_model"].properties

    def test_versions_count_up_and_only_the_last_k_stay(self):
        for i in range(4):
            props = self._push(self._model(f"m{i}", float(i)), keep_versions=2)
            self.assertEqual(props["pushed"], 1)
            self.assertEqual(props["pushed_version"], str(i + 1))
            self.assertEqual(
                props["pushed_destination"],
                os.path.join(self.model_dir, str(i + 1)),
            )
        self.assertEqual(model_store.list_versions(self.model_dir), [3, 4])
        loaded = tf.saved_model.load(os.path.join(self.model_dir, "4"))
        self.assertAllClose(loaded(tf.constant([2.0]))["y"], [6.0])

    def test_pushing_the_same_export_again_copies_nothing(self):
        model = self._model("m", 5.0)
        self.assertEqual(self._push(model)["pushed_version"], "1")
        props = self._push(model)
        self.assertEqual(props["pushed"], 1)
        self.assertEqual(props["pushed_version"], "1")
        self.assertIn("Already", props["reason"])
        self.assertEqual(model_store.list_versions(self.model_dir), [1])

    def test_unblessed_models_are_not_pushed(self):
        model = self._model("m")
        cases = [
            (self._blessing("not", False, model), None, "not BLESSED"),
            (
                None,
                self._blessing("infra_not", False, model, infra=True),
                "INFRA_BLESSED",
            ),
        ]
        for blessing_artifact, infra, why in cases:
            props = self._push(model, blessing_artifact, infra)
            self.assertEqual(props["pushed"], 0)
            self.assertIn(why, props["reason"])
        unexported = self._model("unexported", exported=False)
        self.assertEqual(self._push(unexported)["pushed"], 0)
        self.assertFalse(tf.io.gfile.exists(self.model_dir))
        infra_ok = self._blessing("infra_ok", True, model, infra=True)
        self.assertEqual(self._push(model, None, infra_ok)["pushed"], 1)

    def test_blessings_of_another_model_are_refused(self):
        model, other = self._model("m", 1.0), self._model("other", 2.0)
        with self.assertRaisesRegex(base.ArtifactError, "other-trained"):
            self._push(model, self._blessing("b_other", True, other))
        with self.assertRaisesRegex(base.ArtifactError, "records no model"):
            self._push(model, self._blessing("b_none", True, None))
        infra_other = self._blessing("i_other", True, other, infra=True)
        with self.assertRaisesRegex(base.ArtifactError, "Infra blessing"):
            self._push(model, infra=infra_other)
        infra_none = self._blessing("i_none", True, None, infra=True)
        with self.assertRaisesRegex(base.ArtifactError, "for model none"):
            self._push(model, infra=infra_none)
        self.assertFalse(tf.io.gfile.exists(self.model_dir))
        # The model's own blessings, through another spelling of the path.
        own = self._blessing("b_own", True, model)
        own.properties["current_model"] = f"{self.root}/./m-trained"
        infra_own = self._blessing("i_own", True, model, infra=True)
        self.assertEqual(self._push(model, own, infra_own)["pushed"], 1)

    def test_model_names_are_validated(self):
        for name in ("coatnet", "coatnet_21k", "CoAtNet-0.v2", "7"):
            pusher.PusherConfig(serving_base=self.root, model_name=name)
        bad = [
            "",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "../up",
            "x y",
            "é",
            "a" * 256,
        ]
        for name in bad:
            with self.assertRaisesRegex(ValueError, "Bad model_name"):
                pusher.PusherConfig(serving_base=self.root, model_name=name)

    def test_timestamp_versions_stay_increasing(self):
        before = int(time.time())
        props = self._push(self._model("a", 1.0), versioning="timestamp")
        self.assertGreaterEqual(int(props["pushed_version"]), before)
        # A clock behind the newest version still yields a newer one.
        # (A complete version another pusher wrote: an empty directory
        # would be a killed push's leftover, replaced in place.)
        future = before + 10**6
        model_store.write_version(
            self.model_dir,
            os.path.join(self._model("c", 3.0).uri, model_io.SERVING_DIR),
            future,
        )
        props = self._push(self._model("b", 2.0), versioning="timestamp")
        self.assertEqual(props["pushed_version"], str(future + 1))

    def test_a_server_never_sees_a_partial_version(self):
        source = os.path.join(self._model("m").uri, model_io.SERVING_DIR)
        copy = tf.io.gfile.copy
        order = []

        def watched_copy(src, dst, overwrite=False):
            # What a polling server would load at this instant.
            self.assertEqual(model_store.ready_versions(self.model_dir), [])
            self.assertEqual(model_store.list_versions(self.model_dir), [])
            order.append(os.path.basename(src))
            copy(src, dst, overwrite=overwrite)

        with mock.patch.object(tf.io.gfile, "copy", watched_copy):
            model_store.write_version(self.model_dir, source, 7)
        self.assertEqual(order[-1], "saved_model.pb")
        self.assertIn("variables.index", order)
        self.assertEqual(model_store.ready_versions(self.model_dir), [7])
        self.assertEqual(os.listdir(self.model_dir), ["7"])

    def test_a_failed_copy_leaves_no_version_and_no_temp(self):
        source = os.path.join(self._model("m").uri, model_io.SERVING_DIR)
        copy = tf.io.gfile.copy
        calls = []

        def failing_copy(src, dst, overwrite=False):
            calls.append(src)
            if len(calls) == 2:
                raise OSError("disk full")
            copy(src, dst, overwrite=overwrite)

        with mock.patch.object(tf.io.gfile, "copy", failing_copy):
            with self.assertRaisesRegex(OSError, "disk full"):
                model_store.write_version(self.model_dir, source, 1)
        self.assertEqual(os.listdir(self.model_dir), [])
        with self.assertRaises(FileExistsError):
            os.makedirs(os.path.join(self.model_dir, "2"))
            model_store.write_version(self.model_dir, source, 2)

    def test_object_store_copy_writes_saved_model_pb_last(self):
        # ram:// stands in for gs://: no atomic rename, so the copy goes
        # straight to the version directory with saved_model.pb last.
        source = os.path.join(self._model("m").uri, model_io.SERVING_DIR)
        target = f"ram://pusher_test_{os.getpid()}/coatnet"
        copy = tf.io.gfile.copy
        seen_before_pb = []

        def watched_copy(src, dst, overwrite=False):
            if os.path.basename(src) == "saved_model.pb":
                seen_before_pb.extend(model_store.ready_versions(target))
            copy(src, dst, overwrite=overwrite)

        with mock.patch.object(tf.io.gfile, "copy", watched_copy):
            final = model_store.write_version(target, source, 3)
        self.assertEqual(seen_before_pb, [])
        self.assertEqual(model_store.ready_versions(target), [3])
        self.assertTrue(
            tf.io.gfile.exists(f"{final}/variables/variables.index")
        )

    def test_a_killed_push_is_replaced_or_completed_not_counted(self):
        model = self._model("m", 4.0)
        source = os.path.join(model.uri, model_io.SERVING_DIR)
        # Killed before saved_model.pb: never loadable, so replaced in
        # place; the killed run's temporary directory is cleared.
        partial = os.path.join(self.model_dir, "1")
        os.makedirs(os.path.join(partial, "variables"))
        with open(os.path.join(partial, "fingerprint.pb"), "wb") as f:
            with open(os.path.join(source, "fingerprint.pb"), "rb") as g:
                f.write(g.read())
        os.makedirs(os.path.join(self.model_dir, ".tmp-1-999"))
        props = self._push(model)
        self.assertEqual(props["pushed_version"], "1")
        self.assertIn("Pushed", props["reason"])
        self.assertEqual(os.listdir(self.model_dir), ["1"])
        self.assertTrue(publish.is_pushed(partial))
        self.assertTrue(os.path.exists(os.path.join(partial, "saved_model.pb")))
        # Killed after saved_model.pb, before the marker: the same model is
        # complete, so the next push only marks it.
        os.remove(os.path.join(partial, publish.PUSHED_MARKER))
        props = self._push(model)
        self.assertEqual(props["pushed_version"], "1")
        self.assertIn("Completed", props["reason"])
        self.assertTrue(publish.is_pushed(partial))
        # A different model without a marker is left alone.
        os.remove(os.path.join(partial, publish.PUSHED_MARKER))
        props = self._push(self._model("other", 6.0))
        self.assertEqual(props["pushed_version"], "2")
        self.assertEqual(model_store.list_versions(self.model_dir), [1, 2])

    def test_prune_keeps_the_protected_version(self):
        for v in (1, 2, 5):
            os.makedirs(os.path.join(self.model_dir, str(v)))
        os.makedirs(os.path.join(self.model_dir, ".tmp-9-1"))
        self.assertEqual(model_store.prune(self.model_dir, 1, protect=2), [1])
        self.assertEqual(model_store.list_versions(self.model_dir), [2, 5])
        self.assertEqual(model_store.prune(self.model_dir, 0), [])
        self.assertEqual(model_store.next_version(self.model_dir), 6)


if __name__ == "__main__":
    tf.test.main()
