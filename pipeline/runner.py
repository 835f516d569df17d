"""Runs a pipeline job end to end: lock, data, DAG, report, exit code.

The three binaries (`pretrain`, `finetune`, `retrain`) parse flags into a
`PipelineConfig` and call `run_job`. Exit codes, for schedulers:

  0   done: the candidate was pushed, or nothing changed (fully cached)
  10  done, but the candidate was not blessed: the served version stays
  75  another run holds the pipeline root's lock (retry later)
  1   a component failed (the ledger records it; a re-run resumes)
  2   bad flags or config
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

from absl import logging

from components import base
from components.example_gen import spans
from pipeline import config as config_lib
from pipeline import dag, demo_data, lock, pipelines, report
from pipeline import store as store_lib

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_BLESSED = 10
EXIT_LOCKED = 75

JOBS = (pipelines.PRETRAIN, pipelines.FINETUNE, pipelines.RETRAIN)


@dataclasses.dataclass
class JobResult:
    """What `run_job` did."""

    exit_code: int
    run_id: str = ""
    rows: list[report.StageRow] = dataclasses.field(default_factory=list)
    report_path: str = ""
    result: dag.PipelineResult | None = None


def prepare_data(
    config: config_lib.PipelineConfig,
) -> config_lib.PipelineConfig:
    """Fills in the demo dataset and pins the spans to process.

    With `demo` and no input, the digits are written under
    `<root>/data` (once) and both ExampleGens read them: pretraining on all
    ten classes, finetuning on the first five. Patterns with `{SPAN}` are
    resolved to their latest span here, before caching, so a new span
    invalidates the cache (TFX's ExampleGen driver does the same).

    Args:
      config: the run's config.

    Returns:
      The config with inputs and spans filled in.
    """
    if config.demo and not config.data.input:
        data_root = os.path.join(config.root, "data")
        pattern = demo_data.ensure_demo_data(
            data_root, fraction=config.demo_fraction
        )
        names = os.path.join(data_root, demo_data.SYNSETS_FILE)
        subset = demo_data.write_finetune_synsets(
            data_root, config_lib.DEMO_FINETUNE_CLASSES
        )
        config = dataclasses.replace(
            config,
            data=dataclasses.replace(
                config.data, input=pattern, class_descriptions=names
            ),
            finetune_data=dataclasses.replace(
                config.finetune_data,
                input=pattern,
                synsets=config.finetune_data.synsets or subset,
                class_descriptions=names,
            ),
        )
    if not config.finetune_data.input:
        config = dataclasses.replace(
            config,
            finetune_data=dataclasses.replace(
                config.finetune_data, input=config.data.input
            ),
        )
    return dataclasses.replace(
        config,
        data=_pin_span(config.data, "data"),
        finetune_data=_pin_span(config.finetune_data, "finetune_data"),
    )


def _pin_span(data, name: str):
    if data.span is not None or not spans.has_span(data.input):
        return data
    resolved = spans.resolve(data.input, flag=f"{name}.input")
    return dataclasses.replace(
        data, span=resolved.span, version=resolved.version
    )


def build_nodes(
    job: str, config: config_lib.PipelineConfig, base_model: str = ""
) -> list[dag.Node]:
    """The DAG of a job.

    Args:
      job: "pretrain", "finetune" or "retrain".
      config: the prepared config.
      base_model: finetune only: a Model artifact URI to start from
        (default: the newest pretrained model in the store).

    Returns:
      The nodes in order.
    """
    if job == pipelines.PRETRAIN:
        nodes = pipelines.pretrain_nodes(config)
        if config.run_finetune:
            nodes += pipelines.finetune_nodes(
                config,
                dag.OutputRef(
                    pipelines.node_id("Trainer", "pretrain"), "model"
                ),
            )
        return nodes
    if job == pipelines.FINETUNE:
        source: dag.InputSource = pipelines.latest_model(pipelines.PRETRAIN)
        if base_model:
            source = base.Artifact.read(base_model, base.MODEL)
        return pipelines.finetune_nodes(config, source)
    if job == pipelines.RETRAIN:
        return pipelines.retrain_nodes(config)
    raise ValueError(f"Unknown job {job!r}; expected one of {JOBS}.")


def run_job(
    job: str,
    config: config_lib.PipelineConfig,
    base_model: str = "",
    progress: Callable[[str], None] = print,
) -> JobResult:
    """Runs one job under the pipeline root's lock and reports on it.

    Args:
      job: "pretrain", "finetune" or "retrain".
      config: the run's config (flags already applied).
      base_model: for finetune, an explicit Model artifact URI.
      progress: receives progress lines.

    Returns:
      The job's result, with the exit code for the binary.
    """
    root = config.root
    store = store_lib.ArtifactStore(root)
    if job == pipelines.RETRAIN:
        # Scheduled retraining always takes the newest span.
        config = dataclasses.replace(
            config,
            finetune_data=dataclasses.replace(
                config.finetune_data, span=None, version=None
            ),
        )
    try:
        with lock.RunLock(root):
            config = prepare_data(config)
            nodes = build_nodes(job, config, base_model)
            run_id = dag.new_run_id()
            progress(f"{job}: run {run_id}, pipeline root {root}")
            base.write_json(
                os.path.join(store.run_dir(run_id), "config.json"),
                base.config_to_json(config),
            )
            try:
                result = pipelines.run_nodes(
                    job, nodes, store, config, run_id, progress
                )
            except Exception:
                logging.exception("%s failed", job)
                return JobResult(EXIT_FAILED, run_id)
    except lock.LockHeldError as e:
        progress(f"{job}: {e}")
        return JobResult(EXIT_LOCKED)
    stages = [
        s
        for s in (pipelines.PRETRAIN, pipelines.FINETUNE, pipelines.RETRAIN)
        if f"Trainer.{s}" in result.outputs
    ]
    rows = [report.stage_row(s, result.outputs) for s in stages]
    run_dir = store.run_dir(run_id)
    path = ""
    if "://" not in run_dir:
        path = report.write_report(
            run_dir,
            f"{job} run {run_id}",
            rows,
            result.outputs,
            base.config_to_json(config),
        )
    progress("\n" + report.format_table(rows))
    if path:
        progress(f"report: {path}")
    last = rows[-1] if rows else None
    code = EXIT_OK
    if last is not None and last.blessed == 0:
        code = EXIT_NOT_BLESSED
    return JobResult(code, run_id, rows, path, result)


def exit_with(result: JobResult) -> None:
    """Exits the process with the job's code (for the binaries)."""
    sys.stdout.flush()
    sys.exit(result.exit_code)
