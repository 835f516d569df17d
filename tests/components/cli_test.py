"""Tests for components/cli.py: user paths, running a component."""

import dataclasses
import io
import json
import os
from contextlib import redirect_stdout
from unittest import mock

import tensorflow as tf
from absl import flags

from components import base, cli


@dataclasses.dataclass(frozen=True)
class _MarkConfig:
    text: str = "x"


class _Mark(base.Component):
    """Writes its config's text into its one output."""

    SPEC = base.ComponentSpec(
        name="Mark",
        inputs={},
        outputs={"marked": base.MODEL},
        config_type=_MarkConfig,
    )

    def run(self, inputs, outputs, config):
        with open(os.path.join(outputs["marked"].uri, "mark.txt"), "w") as f:
            f.write(config.text)
        outputs["marked"].properties["chars"] = len(config.text)


class CliTest(tf.test.TestCase):
    def test_relative_path_uses_build_working_directory(self):
        with mock.patch.dict(os.environ, {"BUILD_WORKING_DIRECTORY": "/u/me"}):
            self.assertEqual(cli.resolve_user_path("out/a"), "/u/me/out/a")

    def test_absolute_and_uri_unchanged(self):
        with mock.patch.dict(os.environ, {"BUILD_WORKING_DIRECTORY": "/u/me"}):
            self.assertEqual(cli.resolve_user_path("/abs"), "/abs")
            self.assertEqual(cli.resolve_user_path("gs://b/x"), "gs://b/x")

    def test_without_bazel_uses_cwd(self):
        env = dict(os.environ)
        env.pop("BUILD_WORKING_DIRECTORY", None)
        with mock.patch.dict(os.environ, env, clear=True):
            self.assertEqual(
                cli.resolve_user_path("rel"),
                os.path.join(os.getcwd(), "rel"),
            )

    def test_refuses_source_tree_and_runfiles(self):
        src = self.create_tempdir("src").full_path
        runfiles = self.create_tempdir("runfiles").full_path
        env = {"BUILD_WORKSPACE_DIRECTORY": src, "RUNFILES_DIR": runfiles}
        with mock.patch.dict(os.environ, env):
            with self.assertRaisesRegex(ValueError, "--output=.*source tree"):
                cli.check_output_location(os.path.join(src, "o"), "output")
            with self.assertRaisesRegex(ValueError, "runfiles"):
                cli.check_output_location(runfiles, "output")
            ok = self.create_tempdir("elsewhere").full_path
            self.assertEqual(cli.check_output_location(ok, "output"), ok)

    def test_default_home(self):
        with mock.patch.dict(os.environ, {"COATNET_HOME": "/data/runs"}):
            self.assertEqual(cli.default_home(), "/data/runs")

    def test_read_input_artifact_names_flag(self):
        with self.assertRaisesRegex(ValueError, "--examples is required"):
            cli.read_input_artifact("", base.EXAMPLES, "examples")
        empty = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, "--examples: .*not an"):
            cli.read_input_artifact(empty, base.EXAMPLES, "examples")

    def test_read_input_artifacts_leaves_out_empty_optional_flags(self):
        values = flags.FlagValues()
        model = flags.DEFINE_string("model", "", "", flag_values=values)
        extra = flags.DEFINE_string("baseline", "", "", flag_values=values)
        uri = self.create_tempdir().full_path
        base.Artifact(base.MODEL, uri).write()
        values(["prog", f"--model={uri}"])
        spec = {"model": (model, base.MODEL), "old": (extra, base.MODEL)}
        inputs = cli.read_input_artifacts(spec, optional=("old",))
        self.assertEqual(list(inputs), ["model"])
        self.assertEqual(inputs["model"].uri, uri)
        # Required and empty: the error names the flag.
        with self.assertRaisesRegex(ValueError, "--baseline is required"):
            cli.read_input_artifacts(spec)
        values["baseline"].value = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, "--baseline: .*not an"):
            cli.read_input_artifacts(spec, optional=("old",))

    def test_component_config_applies_set_after_values(self):
        config = cli.component_config(
            _MarkConfig, {"text": "from file"}, ["text=from set"]
        )
        self.assertEqual(config, _MarkConfig(text="from set"))
        with self.assertRaisesRegex(ValueError, "--set='text'"):
            cli.component_config(_MarkConfig, {}, ["text"])

    def test_given_keeps_only_flags_the_user_set(self):
        values = flags.FlagValues()
        a = flags.DEFINE_integer("a", None, "", flag_values=values)
        b = flags.DEFINE_string("b", None, "", flag_values=values)
        c = flags.DEFINE_bool("c", None, "", flag_values=values)
        values(["prog", "--a=0", "--noc"])
        self.assertEqual(
            cli.given({"x": a, "y": b, "z": c}), {"x": 0, "z": False}
        )

    def test_run_component_writes_each_output_under_output_dir(self):
        home = self.create_tempdir("home").full_path
        with mock.patch.dict(os.environ, {"COATNET_HOME": home}):
            printed = io.StringIO()
            with redirect_stdout(printed):
                result = cli.run_component(
                    _Mark(), {}, _MarkConfig(text="hi"), "", ["marked"]
                )
        uri = result["marked"].uri
        # The default: <home>/<component name>/<time>/<output key>.
        self.assertEqual(os.path.dirname(os.path.dirname(uri)), f"{home}/Mark")
        self.assertEqual(os.path.basename(uri), "marked")
        with open(os.path.join(uri, "mark.txt")) as f:
            self.assertEqual(f.read(), "hi")
        self.assertEqual(
            base.Artifact.read(uri, base.MODEL).properties["chars"], 2
        )
        self.assertEqual(json.loads(printed.getvalue())["output"], "marked")

        chosen = self.create_tempdir("chosen").full_path
        with redirect_stdout(io.StringIO()):
            result = cli.run_component(
                _Mark(), {}, _MarkConfig(), chosen, ["marked"]
            )
        self.assertEqual(result["marked"].uri, f"{chosen}/marked")

    def test_run_component_refuses_the_source_tree(self):
        src = self.create_tempdir("src").full_path
        with mock.patch.dict(os.environ, {"BUILD_WORKSPACE_DIRECTORY": src}):
            with self.assertRaisesRegex(ValueError, "--output=.*source"):
                cli.run_component(
                    _Mark(), {}, _MarkConfig(), f"{src}/o", ["marked"]
                )

    def test_set_flags_parse_and_name_the_flag(self):
        self.assertEqual(
            cli.parse_set_flags(["a.b=1", "c=x=y", "a.b=2"]),
            {"a.b": "2", "c": "x=y"},
        )
        with self.assertRaisesRegex(ValueError, "--set='a.b'"):
            cli.parse_set_flags(["a.b"])

    def test_old_flag_spellings_move_over_and_say_what_to_use(self):
        fv = flags.FlagValues()
        flags.DEFINE_string("output", "", "new", flag_values=fv)
        flags.DEFINE_multi_string("set", [], "new", flag_values=fv)
        flags.DEFINE_string("label", "", "new", flag_values=fv)
        cli.define_renamed_flag("output_dir", "output", flag_values=fv)
        cli.define_renamed_flag("config_override", "set", flag_values=fv)
        cli.define_renamed_flag("name", "label", flag_values=fv)
        fv(
            [
                "prog",
                "--output_dir=/tmp/o",
                "--set=a=1",
                "--config_override=b=2",
                "--label=new",
                "--name=old",
            ]
        )
        messages = []
        cli.apply_renamed_flags(fv, warn=messages.append)
        self.assertEqual(fv.output, "/tmp/o")
        self.assertEqual(fv.set, ["a=1", "b=2"])
        self.assertEqual(fv.label, "new")  # The new spelling wins.
        self.assertIn(
            "--output_dir is an old spelling; use --output instead.", messages
        )
        self.assertIn(
            "--config_override is an old spelling; use --set instead.",
            messages,
        )


if __name__ == "__main__":
    tf.test.main()
