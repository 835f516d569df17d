"""The compiled Kubeflow specs mirror our DAGs; the checked-in examples are
what `pipeline:compile` writes, byte for byte."""

import dataclasses
import json
import os
import subprocess
import sys

import yaml
from absl.testing import absltest, parameterized

from components import base
from pipeline import config as config_lib
from pipeline import dag, kfp_compile, pipelines, runner
from tests import child_env

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
_ROOT = "gs://coatnet-example/pipelines/coatnet-demo"
_INPUT = "gs://coatnet-example/data/digits/span-{SPAN}"
_IMAGE = "us-docker.pkg.dev/my-project/coatnet/pipeline:latest"
# The flags that wrote docs/kfp/i21k_to_i1k-<job>.yaml: the paper's main
# path, CoAtNet-2 on TPU (see docs/kfp/README.md).
_EXAMPLE_FLAGS = (
    "--preset=i21k_to_i1k",
    "--variant=coatnet-2",
    "--pipeline_root=gs://coatnet-example/pipelines/coatnet2",
    "--input=gs://coatnet-example/i21k/{SPAN}",
    "--finetune_input=gs://coatnet-example/i1k/train",
    "--set=finetune_data.validation_input=gs://coatnet-example/i1k/val",
    f"--image={_IMAGE}",
    "--strategy=tpu",
    "--tpu=local",
)


def _config(strategy: str = "default") -> config_lib.PipelineConfig:
    config = config_lib.apply(
        config_lib.demo_config(),
        {
            "pipeline_root": _ROOT,
            "data.input": _INPUT,
            "finetune_data.input": _INPUT,
            "pretrain.runtime.strategy": strategy,
            "finetune.runtime.strategy": strategy,
        },
    )
    return config


def _tasks(spec: dict) -> dict[str, tuple[dict, str | None]]:
    """Every executor task by display name, with the condition it is under."""
    found = {}
    conditions = {}

    def walk(dag_spec: dict, condition: str | None) -> None:
        for name, task in dag_spec["tasks"].items():
            ref = task["componentRef"]["name"]
            component = spec["components"][ref]
            if "dag" in component:
                policy = task.get("triggerPolicy", {}).get("condition")
                conditions[ref] = (name, task)
                walk(component["dag"], policy)
            else:
                found[task["taskInfo"]["name"]] = (task, condition, name)

    walk(spec["root"]["dag"], None)
    return found


def _producer(spec: dict, task: dict, key: str) -> tuple[str, str]:
    """(producer task name, output key) of an artifact input, following a
    condition's pipeline channel back to the root DAG."""
    source = task["inputs"]["artifacts"][key]
    if "taskOutputArtifact" in source:
        out = source["taskOutputArtifact"]
        return out["producerTask"], out["outputArtifactKey"]
    channel = source["componentInputArtifact"]
    for root_task in spec["root"]["dag"]["tasks"].values():
        artifacts = root_task.get("inputs", {}).get("artifacts", {})
        if channel in artifacts and "componentRef" in root_task:
            out = artifacts[channel]["taskOutputArtifact"]
            return out["producerTask"], out["outputArtifactKey"]
    raise AssertionError(f"channel {channel} not found")


class KfpCompileTest(parameterized.TestCase):
    @parameterized.parameters(*runner.JOBS)
    def test_spec_mirrors_the_dag(self, job):
        config = _config()
        nodes = runner.build_nodes(job, config)
        spec = kfp_compile.compile_spec(job, nodes, config, _IMAGE)
        tasks = _tasks(spec)
        self.assertEqual(set(tasks), {n.id for n in nodes})
        self.assertEqual(spec["defaultPipelineRoot"], _ROOT + "/kfp")
        self.assertEqual(
            spec["pipelineInfo"]["name"], f"coatnet-demo-{job}".lower()
        )
        name_of = {n.id: tasks[n.id][2] for n in nodes}
        for node in nodes:
            task, condition, _ = tasks[node.id]
            params = task["inputs"]["parameters"]
            self.assertEqual(
                json.loads(params["config"]["runtimeValue"]["constant"]),
                base.config_to_json(node.config),
            )
            for key, source in node.inputs.items():
                if isinstance(source, dag.OutputRef):
                    self.assertEqual(
                        _producer(spec, task, key),
                        (name_of[source.node_id], source.key),
                        f"{node.id}.{key}",
                    )
                else:
                    self.assertTrue(callable(source))
                    resolved = params[f"resolve_{key}"]["runtimeValue"]
                    self.assertEqual(
                        json.loads(resolved["constant"]), source.spec
                    )
            # Exactly the DAG's inputs: no extra edges.
            self.assertEqual(
                set(task["inputs"].get("artifacts", {})),
                {
                    k
                    for k, s in node.inputs.items()
                    if isinstance(s, dag.OutputRef)
                },
            )
            executor = spec["deploymentSpec"]["executors"][
                spec["components"][task["componentRef"]["name"]][
                    "executorLabel"
                ]
            ]["container"]
            self.assertEqual(
                executor["command"], list(kfp_compile.STEP_COMMAND)
            )
            self.assertEqual(executor["image"], _IMAGE)
            self.assertIn(
                f"--component={node.component.SPEC.name}", executor["args"]
            )
            self.assertIn(f"--ledger_root={_ROOT}", executor["args"])
            self.assertNotIn("resources", executor)
            if node.component.SPEC.name == "Pusher":
                evaluator = name_of[node.inputs["blessing"].node_id]
                self.assertEqual(
                    condition,
                    "int(inputs.parameter_values['pipelinechannel--"
                    f"{evaluator}-blessed']) == 1",
                )
            else:
                self.assertIsNone(condition, node.id)

    def test_resolver_specs_round_trip(self):
        config = _config()
        for job in runner.JOBS:
            for node in runner.build_nodes(job, config):
                for source in node.inputs.values():
                    if callable(source):
                        again = pipelines.resolver_from_spec(source.spec)
                        self.assertEqual(again.spec, source.spec)
        with self.assertRaisesRegex(ValueError, "Unknown resolver 'nope'"):
            pipelines.resolver_from_spec({"resolver": "nope", "args": []})

    def test_tpu_trainer_asks_for_accelerators(self):
        config = _config(strategy="tpu")
        nodes = runner.build_nodes("retrain", config)
        resources = kfp_compile.Resources("TPU_V3", 8, "8", "64G")
        spec = kfp_compile.compile_spec(
            "retrain", nodes, config, _IMAGE, resources
        )
        executors = spec["deploymentSpec"]["executors"]
        trainer = executors["exec-trainer-retrain"]["container"]
        accelerator = trainer["resources"]["accelerator"]
        self.assertEqual(accelerator["resourceType"], "TPU_V3")
        self.assertEqual(accelerator["resourceCount"], "8")
        self.assertEqual(trainer["resources"]["resourceMemoryLimit"], "64G")
        others = [
            k for k, v in executors.items() if "resources" in v["container"]
        ]
        self.assertEqual(others, ["exec-trainer-retrain"])

    def test_fixed_base_model_is_imported(self):
        config = _config()
        uri = "gs://coatnet-example/models/pretrained"
        nodes = pipelines.finetune_nodes(config, base.Artifact(base.MODEL, uri))
        spec = kfp_compile.compile_spec("finetune", nodes, config, _IMAGE)
        importers = [
            e["importer"]
            for e in spec["deploymentSpec"]["executors"].values()
            if "importer" in e
        ]
        self.assertLen(importers, 1)
        self.assertEqual(importers[0]["artifactUri"]["constant"], uri)
        self.assertEqual(
            importers[0]["typeSchema"]["schemaTitle"], "system.Model"
        )

    def test_spans_and_resolvers_are_not_cached(self):
        config = _config()
        nodes = runner.build_nodes("retrain", config)
        spec = kfp_compile.compile_spec("retrain", nodes, config, _IMAGE)
        tasks = _tasks(spec)
        for node in nodes:
            caching = tasks[node.id][0].get("cachingOptions", {})
            runs_always = node.id.startswith("ExampleGen") or any(
                callable(s) for s in node.inputs.values()
            )
            self.assertEqual(
                caching.get("enableCache", False), not runs_always, node.id
            )
        nocache = dataclasses.replace(config, enable_cache=False)
        spec = kfp_compile.compile_spec("retrain", nodes, nocache, _IMAGE)
        for task, _, _ in _tasks(spec).values():
            self.assertFalse(task["cachingOptions"].get("enableCache", False))

    @parameterized.parameters(*runner.JOBS)
    def test_checked_in_example_is_reproduced(self, job):
        path = os.path.join(_REPO, "docs", "kfp", f"i21k_to_i1k-{job}.yaml")
        out = os.path.join(self.create_tempdir().full_path, "spec.yaml")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.compile",
                f"--job={job}",
                *_EXAMPLE_FLAGS,
                f"--output={out}",
            ],
            check=True,
            cwd=_REPO,
            env=child_env.python_env(),
            capture_output=True,
        )
        with open(out, "rb") as f:
            written = f.read()
        with open(path, "rb") as f:
            self.assertEqual(
                written,
                f.read(),
                f"{path} is stale; regenerate it (docs/kfp/README.md).",
            )
        self.assertEqual(yaml.safe_load(written)["sdkVersion"], "kfp-2.17.3")

    def test_compile_without_input_names_the_flag(self):
        out = os.path.join(self.create_tempdir().full_path, "spec.yaml")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.compile",
                f"--pipeline_root={_ROOT}",
                f"--output={out}",
            ],
            cwd=_REPO,
            env=child_env.python_env(),
            capture_output=True,
            text=True,
        )
        self.assertEqual(proc.returncode, runner.EXIT_USAGE, proc.stderr)
        self.assertIn("--input (data.input) is required", proc.stderr)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    absltest.main()
