"""The DAGs users run: pretrain, finetune and retrain.

  pretrain:  ExampleGen -> Trainer -> Evaluator -> Exporter -> Pusher
             (and, with `run_finetune`, the finetune DAG after it)
  finetune:  ExampleGen -> Trainer (from a pretrained Model, at a higher
             resolution, on the finetune labels) -> Evaluator (against the
             pushed model) -> Exporter -> Pusher
  retrain:   ExampleGen (latest span) -> Trainer (warm start from the last
             blessed model) -> Evaluator (against the pushed model) ->
             Exporter -> Pusher (only if blessed)

Node ids are `<Component>.<stage>` (e.g. `Trainer.finetune`), so output
directories read `<root>/Trainer.finetune/model/<execution>/`. Inputs that
come from earlier runs are `Resolver`s over the ledger (TFX's
LatestArtifactStrategy and LatestBlessedModelStrategy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from artifacts import blessing as blessing_lib
from artifacts import model_store
from components import base
from components.evaluator.component import Evaluator
from components.example_gen.component import ExampleGen
from components.exporter.component import Exporter
from components.pusher.component import Pusher
from components.trainer.component import Trainer
from pipeline import dag
from pipeline import store as store_lib
from pipeline.config import PipelineConfig

PRETRAIN = "pretrain"
FINETUNE = "finetune"
RETRAIN = "retrain"

# The model library's source is part of every model-touching cache key.
_MODEL_CODE = ("coatnet_tf", "components")


def node_id(component: str, stage: str) -> str:
    return f"{component}.{stage}"


# Resolvers over the ledger. Each carries `spec`, a JSON description that
# `resolver_from_spec` turns back into the resolver, so a compiled pipeline
# step (pipeline/kfp_step.py) resolves the same input at run time.


def _described(resolve: dag.Resolver, name: str, *args) -> dag.Resolver:
    resolve.spec = {
        "resolver": name,
        "args": [getattr(a, "spec", a) for a in args],
    }
    return resolve


def latest_model(stage: str) -> dag.Resolver:
    """The newest Model trained in `stage` (any blessing)."""

    def resolve(store: store_lib.ArtifactStore) -> base.Artifact | None:
        found = _outputs_of(store, node_id("Trainer", stage), "model")
        return found[-1] if found else None

    return _described(resolve, "latest_model", stage)


def latest_blessed_model(*stages: str) -> dag.Resolver:
    """The newest Model that an Evaluator of one of `stages` blessed."""

    def resolve(store: store_lib.ArtifactStore) -> base.Artifact | None:
        blessed = None
        evaluators = {node_id("Evaluator", s) for s in stages}
        for execution in store.executions():
            if not execution.finished_ok:
                continue
            if execution.component_id not in evaluators:
                continue
            blessing = execution.outputs.get("blessing")
            if (
                blessing is not None
                and blessing_lib.blessed_property(blessing) == 1
            ):
                blessed = execution.inputs["model"]
        return blessed

    return _described(resolve, "latest_blessed_model", *stages)


def pushed_model(model_name: str) -> dag.Resolver:
    """The Model (with its SavedModel) currently pushed as `model_name`."""

    def resolve(store: store_lib.ArtifactStore) -> base.Artifact | None:
        current = None
        for execution in store.executions():
            if not execution.component_id.startswith("Pusher."):
                continue
            if not execution.finished_ok:
                continue
            artifact = execution.outputs.get("pushed_model")
            if artifact is None:
                continue
            push = model_store.PushedModel.of(artifact)
            if push.pushed and push.model_name == model_name:
                current = execution.inputs["model"]
        return current

    return _described(resolve, "pushed_model", model_name)


def first_of(*resolvers: dag.Resolver) -> dag.Resolver:
    """The first resolver's artifact that is not None."""

    def resolve(store: store_lib.ArtifactStore) -> base.Artifact | None:
        for resolver in resolvers:
            artifact = resolver(store)
            if artifact is not None:
                return artifact
        return None

    return _described(resolve, "first_of", *resolvers)


def resolver_from_spec(spec: dict) -> dag.Resolver:
    """The resolver a `spec` (a resolver's `.spec`) describes.

    Args:
      spec: {"resolver": name, "args": [...]}; an arg that is a dict is
        itself a resolver spec.

    Returns:
      The resolver.

    Raises:
      ValueError: an unknown resolver name.
    """
    factories = {
        "latest_model": latest_model,
        "latest_blessed_model": latest_blessed_model,
        "pushed_model": pushed_model,
        "first_of": first_of,
    }
    name = spec.get("resolver")
    if name not in factories:
        raise ValueError(
            f"Unknown resolver {name!r}; expected one of {sorted(factories)}."
        )
    args = [
        resolver_from_spec(a) if isinstance(a, dict) else a
        for a in spec.get("args", ())
    ]
    return factories[name](*args)


def _outputs_of(
    store: store_lib.ArtifactStore, component_id: str, key: str
) -> list[base.Artifact]:
    found = []
    for execution in store.executions():
        if execution.component_id != component_id:
            continue
        if not execution.finished_ok:
            continue
        if key in execution.outputs:
            found.append(execution.outputs[key])
    return found


# The DAGs.


def serving_nodes(
    config: PipelineConfig,
    stage: str,
    evaluator_config,
    model_name: str,
    baseline: dag.Resolver | None,
) -> list[dag.Node]:
    """Evaluator -> Exporter -> Pusher for the Trainer of `stage`."""
    examples = dag.OutputRef(node_id("ExampleGen", stage), "examples")
    model = dag.OutputRef(node_id("Trainer", stage), "model")
    eval_inputs = {"examples": examples, "model": model}
    if baseline is not None:
        eval_inputs["baseline_model"] = baseline
    blessing = dag.OutputRef(node_id("Evaluator", stage), "blessing")
    return [
        dag.Node(
            node_id("Evaluator", stage),
            Evaluator(),
            evaluator_config,
            eval_inputs,
            code_packages=_MODEL_CODE,
        ),
        dag.Node(
            node_id("Exporter", stage),
            Exporter(),
            dataclasses.replace(config.exporter, model_name=model_name),
            {"model": model, "blessing": blessing, "examples": examples},
            code_packages=_MODEL_CODE,
        ),
        dag.Node(
            node_id("Pusher", stage),
            Pusher(),
            dataclasses.replace(
                config.pusher,
                serving_base=config.serving,
                model_name=model_name,
            ),
            {
                "model": dag.OutputRef(node_id("Exporter", stage), "model"),
                "blessing": blessing,
                "infra_blessing": dag.OutputRef(
                    node_id("Exporter", stage), "infra_blessing"
                ),
            },
        ),
    ]


def pretrain_nodes(config: PipelineConfig) -> list[dag.Node]:
    """ExampleGen -> Trainer -> Evaluator -> Exporter -> Pusher."""
    stage = PRETRAIN
    return [
        dag.Node(node_id("ExampleGen", stage), ExampleGen(), config.data),
        dag.Node(
            node_id("Trainer", stage),
            Trainer(),
            config.pretrain,
            {
                "examples": dag.OutputRef(
                    node_id("ExampleGen", stage), "examples"
                )
            },
            code_packages=_MODEL_CODE,
        ),
        *serving_nodes(
            config,
            stage,
            config.evaluator,
            config.pretrain_model_name,
            baseline=pushed_model(config.pretrain_model_name),
        ),
    ]


def finetune_nodes(
    config: PipelineConfig,
    base_model: dag.InputSource,
    stage: str = FINETUNE,
) -> list[dag.Node]:
    """The finetune (or retrain) DAG from `base_model`.

    Args:
      config: the pipeline config.
      base_model: where the starting Model comes from.
      stage: FINETUNE, or RETRAIN for scheduled retraining.

    Returns:
      The nodes, in order.
    """
    return [
        dag.Node(
            node_id("ExampleGen", stage), ExampleGen(), config.finetune_data
        ),
        dag.Node(
            node_id("Trainer", stage),
            Trainer(),
            config.finetune,
            {
                "examples": dag.OutputRef(
                    node_id("ExampleGen", stage), "examples"
                ),
                "base_model": base_model,
            },
            code_packages=_MODEL_CODE,
        ),
        *serving_nodes(
            config,
            stage,
            config.finetune_evaluator,
            config.model_name,
            baseline=pushed_model(config.model_name),
        ),
    ]


def retrain_nodes(config: PipelineConfig) -> list[dag.Node]:
    """Warm start from the last blessed finetuned model on the finetune
    data (whose span the runner pins to the latest)."""
    base_model = first_of(
        latest_blessed_model(RETRAIN, FINETUNE),
        latest_model(FINETUNE),
    )
    return finetune_nodes(config, base_model, stage=RETRAIN)


def run_nodes(
    name: str,
    nodes: list[dag.Node],
    store: store_lib.ArtifactStore,
    config: PipelineConfig,
    run_id: str,
    progress: Callable[[str], None] = print,
) -> dag.PipelineResult:
    """Runs a DAG under the config's caching setting."""
    return dag.run(
        name,
        nodes,
        store,
        enable_cache=config.enable_cache,
        run_id=run_id,
        progress=progress,
    )
