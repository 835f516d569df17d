"""A small DAG runner for components: resolve inputs, cache, run, record.

A pipeline is a list of `Node`s. Each node names a component, its typed
config, and where each input comes from: another node's output
(`OutputRef`), a fixed artifact, or a `Resolver` that looks one up in the
store (e.g. the latest blessed model). Nodes run in the given order, which
must be topological.

Resolved inputs are pinned: when the node already ran to completion with
the same config and other inputs, a resolver input resolves to what it
resolved to then (the baseline a candidate model was first evaluated
against, the model a retrain warm-started from), so re-running a pipeline
with nothing new is a no-op instead of comparing a model with its own
export.

Caching (TFX's `enable_cache`): a node's cache key hashes the component, its
config, its input artifacts (URI and properties) and the source code of the
packages it runs. When a COMPLETE execution with the same key exists and
its outputs are still there, the node is skipped and those outputs are
reused. When the newest execution with that key is RUNNING or FAILED (the
process crashed or the component raised), the node runs again in the same
output directories, so a trainer resumes from its last checkpoint: the
runner first retracts their commit markers (`base.retract`) and the
component clears or resumes what the killed run left there, so a
restarted pipeline never refuses its own leftovers.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from components import base
from pipeline import store as store_lib


@dataclasses.dataclass(frozen=True)
class OutputRef:
    """The output `key` of the node `node_id`."""

    node_id: str
    key: str


# Looks an artifact up in the store; None means "absent" (optional input).
Resolver = Callable[[store_lib.ArtifactStore], base.Artifact | None]
InputSource = OutputRef | base.Artifact | Resolver


@dataclasses.dataclass
class Node:
    """One component in a pipeline.

    Attributes:
      id: unique in the pipeline; names its output directories.
      component: the component instance.
      config: its execution properties (the spec's config dataclass).
      inputs: input key to source.
      code_packages: packages besides the component's own whose source is
        part of the cache key (e.g. "coatnet_tf" for the trainer).
    """

    id: str
    component: base.Component
    config: Any
    inputs: Mapping[str, InputSource] = dataclasses.field(default_factory=dict)
    code_packages: Sequence[str] = ()


@dataclasses.dataclass
class PipelineResult:
    """What a run did: per node, its execution and output artifacts."""

    run_id: str
    executions: dict[str, store_lib.Execution]
    outputs: dict[str, dict[str, base.Artifact]]

    def cached(self) -> list[str]:
        return [
            node
            for node, e in self.executions.items()
            if e.state == store_lib.CACHED
        ]


def new_run_id() -> str:
    stamp = datetime.datetime.now(datetime.UTC)
    return stamp.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run(
    pipeline_name: str,
    nodes: Sequence[Node],
    store: store_lib.ArtifactStore,
    *,
    enable_cache: bool = True,
    run_id: str | None = None,
    progress: Callable[[str], None] = print,
) -> PipelineResult:
    """Runs the nodes in order with caching, recording each in the ledger.

    Args:
      pipeline_name: recorded with each execution.
      nodes: the DAG, in topological order.
      store: the artifact store (pipeline root).
      enable_cache: reuse outputs of identical earlier executions.
      run_id: an id for this run (default: time and a random suffix).
      progress: receives one line per node start and end.

    Returns:
      The run's executions and outputs.

    Raises:
      ValueError: duplicate node ids or an input referring to a later or
        unknown node.
      Exception: whatever a component raised; its execution is recorded
        FAILED first.
    """
    run_id = run_id or new_run_id()
    _check_order(nodes)
    result = PipelineResult(run_id, {}, {})
    for index, node in enumerate(nodes, 1):
        config_json = base.config_to_json(node.config)
        inputs = _resolve_inputs(node, result, store, config_json)
        parts = cache_parts(node, inputs, config_json)
        key = cache_key(node, inputs, config_json)
        prefix = f"[{index}/{len(nodes)}] {node.id}"
        hit = store.find_complete(key) if enable_cache else None
        if hit is not None:
            execution = store.start(
                run_id=run_id,
                pipeline=pipeline_name,
                component_id=node.id,
                cache_key=key,
                inputs=inputs,
                config=config_json,
                cache_parts=parts,
            )
            outputs = hit.output_artifacts()
            store.finish(
                execution, store_lib.CACHED, outputs, reused_from=hit.id
            )
            progress(f"{prefix}: cached (execution {hit.id})")
        else:
            why = explain_miss(store, node.id, parts) if enable_cache else ""
            unfinished = store.find_unfinished(key)
            reuse = unfinished.id if unfinished is not None else None
            execution = store.start(
                run_id=run_id,
                pipeline=pipeline_name,
                component_id=node.id,
                cache_key=key,
                inputs=inputs,
                config=config_json,
                reuse_id=reuse,
                cache_parts=parts,
            )
            verb = "resuming" if reuse is not None else "running"
            note = f"; {why}" if why else ""
            progress(f"{prefix}: {verb} (execution {execution.id}{note})")
            uris = {
                k: store.output_uri(node.id, k, execution.id)
                for k in node.component.SPEC.outputs
            }
            if reuse is not None:
                # The ledger never saw it finish, so whatever its directory
                # holds (even a commit marker written just before the kill)
                # is this node's own partial output: un-commit it and let
                # the component clean and redo or resume it.
                for uri in uris.values():
                    base.retract(uri)
            started = time.time()
            try:
                outputs = base.execute(
                    node.component, inputs, uris, node.config
                )
            except BaseException as e:
                store.finish(execution, store_lib.FAILED, error=repr(e))
                progress(f"{prefix}: FAILED: {e!r}")
                raise
            store.finish(execution, store_lib.COMPLETE, outputs)
            progress(f"{prefix}: done in {time.time() - started:.1f} s")
        result.executions[node.id] = execution
        result.outputs[node.id] = outputs
    return result


def cache_parts(
    node: Node, inputs: Mapping[str, base.Artifact], config: Any
) -> dict[str, str]:
    """The hashed parts of a cache key: config, inputs and code."""

    def digest(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    return {
        "component": f"{node.component.SPEC.name}:{node.id}",
        "config": digest(config),
        "inputs": digest(
            {
                k: {"uri": a.uri, "properties": a.properties}
                for k, a in sorted(inputs.items())
            }
        ),
        "code": code_fingerprint(node)[:16],
    }


def cache_key(
    node: Node, inputs: Mapping[str, base.Artifact], config: Any
) -> str:
    """Hash of component, node id, config, inputs and code."""
    text = json.dumps(cache_parts(node, inputs, config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def explain_miss(
    store: store_lib.ArtifactStore, node_id: str, parts: Mapping[str, str]
) -> str:
    """Which parts of the key changed since the node's last execution."""
    for execution in reversed(store.executions()):
        if execution.component_id == node_id and execution.cache_parts:
            changed = [
                k for k, v in parts.items() if execution.cache_parts.get(k) != v
            ]
            return "changed: " + (", ".join(changed) or "outputs missing")
    return "first run"


def code_fingerprint(node: Node) -> str:
    """Hash of the .py sources of the component's package, the contract
    (components/base.py) and `node.code_packages`."""
    module = sys.modules[type(node.component).__module__]
    dirs = {os.path.dirname(os.path.realpath(module.__file__))}
    files = {os.path.realpath(base.__file__)}
    for name in node.code_packages:
        package = importlib.import_module(name)
        dirs.add(os.path.dirname(os.path.realpath(package.__file__)))
    for directory in dirs:
        for dirpath, _, names in os.walk(directory):
            files.update(
                os.path.join(dirpath, n) for n in names if n.endswith(".py")
            )
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _check_order(nodes: Sequence[Node]) -> None:
    seen: set[str] = set()
    for node in nodes:
        if node.id in seen:
            raise ValueError(f"Duplicate node id {node.id!r}.")
        for key, source in node.inputs.items():
            if isinstance(source, OutputRef) and source.node_id not in seen:
                raise ValueError(
                    f"{node.id}.{key} reads {source.node_id}, which does not "
                    "run before it."
                )
        seen.add(node.id)


def _resolve_inputs(
    node: Node,
    result: PipelineResult,
    store: store_lib.ArtifactStore,
    config: Any,
) -> dict[str, base.Artifact]:
    inputs: dict[str, base.Artifact] = {}
    resolvers: dict[str, Resolver] = {}
    for key, source in node.inputs.items():
        if isinstance(source, OutputRef):
            artifact = result.outputs[source.node_id].get(source.key)
            if artifact is None:
                raise ValueError(
                    f"{node.id}.{key}: {source.node_id} has no output "
                    f"{source.key!r}."
                )
            inputs[key] = artifact
        elif isinstance(source, base.Artifact):
            inputs[key] = source
        else:
            resolvers[key] = source
    if not resolvers:
        return inputs
    pinned = _pinned_execution(node.id, inputs, config, store)
    for key, resolver in resolvers.items():
        if pinned is not None:
            artifact = pinned.inputs.get(key)
        else:
            artifact = resolver(store)
        if artifact is not None:
            inputs[key] = artifact
    return inputs


def _pinned_execution(
    component_id: str,
    fixed: Mapping[str, base.Artifact],
    config: Any,
    store: store_lib.ArtifactStore,
) -> store_lib.Execution | None:
    """The newest finished execution of the node with the same config and
    fixed inputs (by URI), whose resolver inputs a re-run reuses."""
    want = {k: a.uri for k, a in fixed.items()}
    for execution in reversed(store.executions()):
        if execution.component_id != component_id or execution.state not in (
            store_lib.COMPLETE,
            store_lib.CACHED,
        ):
            continue
        if execution.config != config:
            continue
        have = {
            k: execution.inputs[k].uri for k in want if k in execution.inputs
        }
        if have == want:
            return execution
    return None
