"""Tests for the component contract in components/base.py."""

import dataclasses
import json
import os

import tensorflow as tf

from components import base


@dataclasses.dataclass(frozen=True)
class _Inner:
    depth: int = 2


@dataclasses.dataclass(frozen=True)
class _Config:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    inner: _Inner = _Inner()


class _Copy(base.Component):
    """Copies a file from its input Examples to its output Model."""

    SPEC = base.ComponentSpec(
        name="Copy",
        inputs={"examples": base.EXAMPLES, "baseline": base.MODEL},
        outputs={"model": base.MODEL},
        config_type=_Config,
        optional_inputs=frozenset({"baseline"}),
    )

    def run(self, inputs, outputs, config):
        src = os.path.join(inputs["examples"].uri, "data.txt")
        with tf.io.gfile.GFile(src) as f:
            text = f.read()
        dst = os.path.join(outputs["model"].uri, "copy.txt")
        with tf.io.gfile.GFile(dst, "w") as f:
            f.write(text * config.inner.depth)
        outputs["model"].properties["chars"] = len(text)


class BaseTest(tf.test.TestCase):
    def _examples(self):
        uri = self.create_tempdir("examples").full_path
        with open(os.path.join(uri, "data.txt"), "w") as f:
            f.write("abc")
        artifact = base.Artifact(base.EXAMPLES, uri, {"span": 3})
        artifact.write()
        return artifact

    def test_execute_records_outputs_and_execution(self):
        examples = self._examples()
        out = os.path.join(self.create_tempdir().full_path, "model")
        outputs = base.execute(
            _Copy(), {"examples": examples}, {"model": out}, _Config()
        )
        self.assertEqual(outputs["model"].properties["chars"], 3)
        with open(os.path.join(out, "copy.txt")) as f:
            self.assertEqual(f.read(), "abcabc")
        again = base.Artifact.read(out, base.MODEL)
        self.assertEqual(again.properties["chars"], 3)
        self.assertEqual(again.properties["producer"], "Copy")
        with open(os.path.join(out, base.EXECUTION_FILE)) as f:
            record = json.load(f)
        self.assertEqual(record["component"], "Copy")
        self.assertEqual(record["config"]["sizes"], [1, 2])
        self.assertEqual(record["inputs"]["examples"]["properties"]["span"], 3)

    def test_missing_required_input(self):
        with self.assertRaisesRegex(base.ArtifactError, "needs the input"):
            base.execute(_Copy(), {}, {"model": "/tmp/x"}, _Config())

    def test_wrong_input_type(self):
        wrong = base.Artifact(base.MODEL, "/nowhere")
        with self.assertRaisesRegex(base.ArtifactError, "must be a Examples"):
            base.execute(
                _Copy(), {"examples": wrong}, {"model": "/tmp/x"}, _Config()
            )

    def test_wrong_config_type(self):
        with self.assertRaisesRegex(TypeError, "_Config"):
            base.execute(
                _Copy(), {"examples": self._examples()}, {"model": "/x"}, 3
            )

    def test_outputs_must_match_spec(self):
        with self.assertRaisesRegex(base.ArtifactError, "writes the outputs"):
            base.execute(_Copy(), {"examples": self._examples()}, {}, _Config())

    def test_read_names_missing_artifact(self):
        path = self.create_tempdir().full_path
        with self.assertRaisesRegex(base.ArtifactError, "_artifact.json"):
            base.Artifact.read(path)

    def test_read_checks_type(self):
        examples = self._examples()
        with self.assertRaisesRegex(base.ArtifactError, "Model is needed"):
            base.Artifact.read(examples.uri, base.MODEL)

    def test_unknown_type(self):
        with self.assertRaisesRegex(base.ArtifactError, "Unknown artifact"):
            base.Artifact("Blob", "/x")

    def test_config_round_trip(self):
        config = _Config(name="y", sizes=(3,), inner=_Inner(depth=5))
        data = base.config_to_json(config)
        self.assertEqual(base.config_from_json(_Config, data), config)

    def test_config_unknown_field_is_named(self):
        with self.assertRaisesRegex(ValueError, "bogus"):
            base.config_from_json(_Config, {"bogus": 1})

    def test_write_json_is_atomic_and_readable(self):
        path = os.path.join(self.create_tempdir().full_path, "a", "b.json")
        base.write_json(path, {"k": [1, 2]})
        self.assertEqual(base.read_json(path), {"k": [1, 2]})
        self.assertEqual(os.listdir(os.path.dirname(path)), ["b.json"])

    def test_read_json_names_bad_file(self):
        path = os.path.join(self.create_tempdir().full_path, "bad.json")
        with open(path, "w") as f:
            f.write("{not json")
        with self.assertRaisesRegex(base.ArtifactError, "bad.json"):
            base.read_json(path)


if __name__ == "__main__":
    tf.test.main()
