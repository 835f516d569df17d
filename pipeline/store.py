"""The artifact store: where outputs live and the run ledger that tracks them.

Layout under a pipeline root (local path or gs://), as TFX lays it out:

  <root>/<component_id>/<output_key>/<execution_id>/   an output artifact
  <root>/ledger.json                                   the run ledger
  <root>/ledger.json.prev                              its previous copy
  <root>/runs/<run_id>/                                run reports
  <root>/.lock                                         the run lock

The ledger records every execution (component, config, cache key, state,
input and output artifacts, timing) and so the lineage: which artifacts an
execution read and which it wrote. It is one JSON document rewritten
atomically; writers hold the run lock (pipeline/lock.py), so it needs no
database and works on GCS as well as on local disk.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import tensorflow as tf

from components import base
from storage import objstore

LEDGER_FILE = "ledger.json"

# Execution states.
RUNNING = "RUNNING"
COMPLETE = "COMPLETE"
FAILED = "FAILED"
CACHED = "CACHED"


@dataclasses.dataclass
class Execution:
    """One run of one component, as the ledger keeps it.

    Attributes:
      id: integer id, unique in the store, increasing.
      run_id: the pipeline run it belongs to.
      pipeline: the pipeline's name.
      component_id: the node id in the DAG (e.g. "Trainer.pretrain").
      cache_key: hash of component, config, inputs and code.
      cache_parts: the key's parts, hashed one by one (to explain misses).
      state: RUNNING, COMPLETE, FAILED or CACHED.
      inputs: input key to artifact.
      outputs: output key to artifact.
      config: the resolved execution properties.
      reused_from: for CACHED, the execution whose outputs were reused.
      started, finished: ISO timestamps.
      error: the failure message, for FAILED.
    """

    id: int
    run_id: str
    pipeline: str
    component_id: str
    cache_key: str
    state: str
    cache_parts: dict[str, str] = dataclasses.field(default_factory=dict)
    inputs: dict[str, base.Artifact] = dataclasses.field(default_factory=dict)
    outputs: dict[str, base.Artifact] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    reused_from: int | None = None
    started: str = ""
    finished: str = ""
    error: str = ""

    @property
    def finished_ok(self) -> bool:
        """COMPLETE, or CACHED: its outputs are there to use."""
        return self.state in (COMPLETE, CACHED)

    def output_artifacts(self) -> dict[str, base.Artifact]:
        """The outputs by key (a copy: callers may change properties)."""
        return {
            k: base.Artifact.from_json(a.to_json())
            for k, a in self.outputs.items()
        }

    def to_json(self) -> dict[str, Any]:
        """The ledger's JSON form (artifacts as their JSON records)."""
        data = dataclasses.asdict(self)
        data["inputs"] = {k: a.to_json() for k, a in self.inputs.items()}
        data["outputs"] = {k: a.to_json() for k, a in self.outputs.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Execution:
        """Reads one ledger entry.

        Raises:
          base.ArtifactError: the entry is not an execution record.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise base.ArtifactError(
                f"Ledger entry {data.get('id')!r} has unknown fields "
                f"{sorted(unknown)}; the ledger was written by another "
                "version of this pipeline."
            )
        values = dict(data)
        for key in ("inputs", "outputs"):
            values[key] = {
                k: base.Artifact.from_json(v)
                for k, v in (data.get(key) or {}).items()
            }
        return cls(**values)


class ArtifactStore:
    """Output URIs and the run ledger under one pipeline root."""

    def __init__(self, root: str):
        self.root = root
        if not objstore.is_remote(root):
            tf.io.gfile.makedirs(root)
        self._path = os.path.join(root, LEDGER_FILE)

    # Layout.

    def output_uri(self, component_id: str, key: str, execution_id: int) -> str:
        """`<root>/<component_id>/<key>/<execution_id>`."""
        return os.path.join(self.root, component_id, key, str(execution_id))

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.root, "runs", run_id)

    # The ledger.

    def executions(self) -> list[Execution]:
        """All executions, oldest first."""
        return [Execution.from_json(e) for e in self._load()["executions"]]

    def get(self, execution_id: int) -> Execution:
        for execution in self.executions():
            if execution.id == execution_id:
                return execution
        raise KeyError(f"No execution {execution_id} in {self._path}.")

    def start(
        self,
        *,
        run_id: str,
        pipeline: str,
        component_id: str,
        cache_key: str,
        inputs: dict[str, base.Artifact],
        config: dict[str, Any],
        reuse_id: int | None = None,
        cache_parts: dict[str, str] | None = None,
    ) -> Execution:
        """Records a RUNNING execution and returns it.

        Args:
          run_id: the pipeline run.
          pipeline: the pipeline's name.
          component_id: the DAG node id.
          cache_key: the execution's cache key.
          inputs: the resolved input artifacts.
          config: the execution properties as JSON.
          reuse_id: resume an unfinished execution with this id (same
            output URIs, so a trainer picks up its checkpoints) instead of
            allocating a new id.
          cache_parts: the cache key's parts, recorded to explain misses.

        Returns:
          The recorded execution.
        """
        data = self._load()
        if reuse_id is None:
            execution_id = data["next_id"]
            data["next_id"] += 1
        else:
            execution_id = reuse_id
            data["executions"] = [
                e for e in data["executions"] if e["id"] != reuse_id
            ]
        execution = Execution(
            id=execution_id,
            run_id=run_id,
            pipeline=pipeline,
            component_id=component_id,
            cache_key=cache_key,
            state=RUNNING,
            cache_parts=dict(cache_parts or {}),
            inputs=dict(inputs),
            config=config,
            started=_now(),
        )
        data["executions"].append(execution.to_json())
        self._save(data)
        return execution

    def finish(
        self,
        execution: Execution,
        state: str,
        outputs: dict[str, base.Artifact] | None = None,
        error: str = "",
        reused_from: int | None = None,
    ) -> Execution:
        """Marks an execution COMPLETE, FAILED or CACHED and saves it."""
        execution.state = state
        execution.finished = _now()
        execution.error = error
        execution.reused_from = reused_from
        if outputs is not None:
            execution.outputs = dict(outputs)
        data = self._load()
        data["executions"] = [
            execution.to_json() if e["id"] == execution.id else e
            for e in data["executions"]
        ]
        self._save(data)
        return execution

    def find_complete(self, cache_key: str) -> Execution | None:
        """The newest COMPLETE execution with this cache key whose outputs
        still exist, or None."""
        for execution in reversed(self.executions()):
            if execution.cache_key != cache_key or execution.state != COMPLETE:
                continue
            if all(a.exists() for a in execution.outputs.values()):
                return execution
        return None

    def find_unfinished(self, cache_key: str) -> Execution | None:
        """The newest RUNNING or FAILED execution with this cache key: a run
        that crashed or failed, to resume in place."""
        for execution in reversed(self.executions()):
            if execution.cache_key == cache_key:
                if execution.state in (RUNNING, FAILED):
                    return execution
                return None
        return None

    def artifacts(
        self,
        type_name: str,
        where: Callable[[base.Artifact], bool] | None = None,
        states: Iterable[str] = (COMPLETE,),
    ) -> list[base.Artifact]:
        """Output artifacts of one type from finished executions, oldest
        first (each once, even when later runs reused it from the cache).

        Args:
          type_name: the artifact type.
          where: an optional filter on the artifact.
          states: execution states to consider.

        Returns:
          The matching artifacts, with their latest known properties.
        """
        found: dict[str, base.Artifact] = {}
        for execution in self.executions():
            if execution.state not in states:
                continue
            for artifact in execution.output_artifacts().values():
                if artifact.type_name != type_name:
                    continue
                found.pop(artifact.uri, None)
                found[artifact.uri] = artifact
        return [a for a in found.values() if where is None or where(a)]

    def lineage(self, uri: str) -> list[Execution]:
        """The executions upstream of the artifact at `uri`, nearest first."""
        producers = {}
        for execution in self.executions():
            if execution.state in (COMPLETE,):
                for artifact in execution.outputs.values():
                    producers.setdefault(artifact.uri, execution)
        chain, todo, seen = [], [uri], set()
        while todo:
            execution = producers.get(todo.pop(0))
            if execution is None or execution.id in seen:
                continue
            seen.add(execution.id)
            chain.append(execution)
            todo.extend(a.uri for a in execution.inputs.values())
        return chain

    def _load(self) -> dict[str, Any]:
        # A damaged ledger falls back to ledger.json.prev (objstore).
        try:
            return objstore.read_json(self._path)
        except FileNotFoundError:
            return {"next_id": 1, "executions": []}

    def _save(self, data: dict[str, Any]) -> None:
        objstore.write_json(self._path, data)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()
