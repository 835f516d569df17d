"""Runs a DAG through KFP's own local runner (kfp.local, no Docker).

`kfp.local.SubprocessRunner` runs only lightweight Python components: its
task handler refuses container components ("The SubprocessRunner only
supports running Lightweight Python Components. You are attempting to run
a Container Component."), and `DockerRunner` needs Docker. So for local
runs each node becomes a Python-function component with the same inputs,
outputs and parameters as its compiled container component
(pipeline/kfp_compile.py), whose body executes the same step command line
(`python -m pipeline.kfp_step ...`) in a subprocess with the URIs KFP
assigned. What differs from the compiled spec:

- input and output artifacts are named `in_<key>` and `out_<key>` (a
  Python function cannot have an input and an output both called `model`,
  as the Exporter has);
- the Evaluator's blessing value is the function's return value (`Output`)
  instead of an output parameter named `blessed`;
- the pipeline root is local, and KFP's local runner has no accelerators.

The DAG, the edges, the resolver specs, the configs and the blessing gate
are built from the same `dag.Node`s as the compiled spec.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence

from kfp import dsl

from components import base
from pipeline import config as config_lib
from pipeline import dag, kfp_compile

_PY_TYPES = {"Dataset": "Dataset", "Model": "Model", "Artifact": "Artifact"}

# The body every generated step function shares: rebuild the step's
# command line from the KFP artifacts and run it.
_BODY = """
    import os
    import subprocess
    import sys
    import tempfile

    values = dict(locals())
    argv = [sys.executable, "-m", "pipeline.kfp_step", *flags,
            "--config", config, "--run_id", run_id]
    for name, value in sorted(values.items()):
        if name.startswith("in_") and value is not None:
            argv += ["--input", name[3:] + "=" + value.uri]
        elif name.startswith("out_"):
            argv += ["--output", name[4:] + "=" + value.uri]
        elif name.startswith("resolve_") and value:
            argv += ["--resolve", name[8:] + "=" + value]
    blessed_path = ""
    if {blessing}:
        blessed_path = os.path.join(tempfile.mkdtemp(), "blessed")
        argv += ["--blessed_path", blessed_path]
    subprocess.run(argv, check=True)
    if blessed_path:
        with open(blessed_path) as f:
            return int(f.read())
"""


def _function_source(node: dag.Node, name: str) -> str:
    spec = node.component.SPEC
    required = ["flags: list", "config: str", "run_id: str"]
    optional = []
    for key, source in node.inputs.items():
        if isinstance(source, (dag.OutputRef, base.Artifact)):
            kfp_type = kfp_compile.KFP_TYPES[spec.inputs[key]]
            required.append(f"in_{key}: Input[{_PY_TYPES[kfp_type]}]")
        else:
            optional.append(f'resolve_{key}: str = ""')
    for key, type_name in spec.outputs.items():
        kfp_type = kfp_compile.KFP_TYPES[type_name]
        required.append(f"out_{key}: Output[{_PY_TYPES[kfp_type]}]")
    blessing = "blessing" in spec.outputs
    returns = " -> int" if blessing else ""
    params = ",\n    ".join(required + optional)
    return f"def {name}(\n    {params},\n){returns}:\n" + _BODY.replace(
        "{blessing}", str(blessing)
    )


def step_components(nodes: Sequence[dag.Node], workdir: str) -> dict:
    """Python-function components of the nodes, by node id.

    The functions are written as a module under `workdir` (KFP reads a
    lightweight component's source with `inspect`).

    Args:
      nodes: the DAG.
      workdir: a directory for the generated module.

    Returns:
      Node id to component.
    """
    names = {n.id: "step_" + n.id.replace(".", "_").lower() for n in nodes}
    header = "from kfp.dsl import Artifact, Dataset, Input, Model, Output\n"
    source = header + "\n\n".join(
        _function_source(n, names[n.id]) for n in nodes
    )
    path = os.path.join(workdir, "coatnet_kfp_local_steps.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("coatnet_kfp_steps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {
        n.id: dsl.component(
            getattr(module, names[n.id]),
            base_image="python:3.11-slim",
            install_kfp_package=False,
        )
        for n in nodes
    }


def build_local_pipeline(
    job: str,
    nodes: Sequence[dag.Node],
    config: config_lib.PipelineConfig,
    workdir: str,
):
    """The pipeline of Python-function steps for `kfp.local`.

    Args:
      job: the job name.
      nodes: the DAG, in order.
      config: the run's config (its root holds the ledger).
      workdir: where the generated step module goes.

    Returns:
      A `dsl.pipeline` function with no parameters.
    """
    factories = step_components(nodes, workdir)
    flags_by_node = {
        n.id: [
            f"--component={n.component.SPEC.name}",
            f"--node={n.id}",
            f"--pipeline={job}",
            f"--ledger_root={config.root}",
        ]
        for n in nodes
    }

    def define():
        tasks: dict = {}
        for node in nodes:
            kwargs = {
                "flags": flags_by_node[node.id],
                "config": json.dumps(
                    base.config_to_json(node.config), sort_keys=True
                ),
                "run_id": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            }
            for key, source in node.inputs.items():
                if isinstance(source, dag.OutputRef):
                    kwargs[f"in_{key}"] = tasks[source.node_id].outputs[
                        f"out_{source.key}"
                    ]
                elif isinstance(source, base.Artifact):
                    kwargs[f"in_{key}"] = dsl.importer(
                        artifact_uri=source.uri,
                        artifact_class=dsl.Model,
                        reimport=False,
                    ).output
                else:
                    kwargs[f"resolve_{key}"] = json.dumps(
                        source.spec, sort_keys=True
                    )
            gate = None
            blessing = node.inputs.get("blessing")
            if node.component.SPEC.name == "Pusher" and isinstance(
                blessing, dag.OutputRef
            ):
                gate = tasks[blessing.node_id].outputs["Output"]
            if gate is not None:
                with dsl.If(gate == 1, name=f"{node.id} if blessed"):
                    task = factories[node.id](**kwargs)
            else:
                task = factories[node.id](**kwargs)
            tasks[node.id] = task

    return dsl.pipeline(name=kfp_compile.pipeline_name(config, job))(define)


def run_local(
    job: str,
    nodes: Sequence[dag.Node],
    config: config_lib.PipelineConfig,
    kfp_root: str,
):
    """Runs the DAG with `kfp.local`'s SubprocessRunner in this environment.

    Args:
      job: the job name.
      nodes: the DAG.
      config: the prepared config (local data, local root).
      kfp_root: where kfp.local puts its outputs.

    Returns:
      The pipeline task KFP returns (its outputs, per output name).

    Raises:
      RuntimeError: a step failed (kfp.local raises on error).
    """
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=kfp_root,
        raise_on_error=True,
    )
    with tempfile.TemporaryDirectory() as workdir:
        pipeline = build_local_pipeline(job, nodes, config, workdir)
        return pipeline()
