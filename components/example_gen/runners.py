"""Choosing and running the Beam runner.

- `DirectRunner` (the default) means Beam's FnApiRunner with one worker
  process per core (`--direct_running_mode=multi_processing`). Beam
  2.77's own `DirectRunner` is a switching runner that first tries
  PrismRunner, a Go binary it downloads from GitHub into
  `~/.apache_beam/cache/prism` (and falls back when that fails); the
  FnApiRunner is what it would fall back to for this batch graph, so it
  is used directly and nothing is ever downloaded.
- `FnApiRunner` / `BundleBasedDirectRunner`: as named, same defaults.
- `DaskRunner`: Beam's runner on a `dask.distributed` cluster, at
  `--dask_address` (e.g. tcp://scheduler:8786) or a local cluster.
- Anything else (`DataflowRunner`, `FlinkRunner`, `SparkRunner`,
  `PortableRunner`, a class path) goes to Beam with the pass-through
  options (`--project`, `--region`, `--temp_location`, `--flink_master`,
  ...).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.runners.runner import PipelineState

from components.example_gen import config as config_lib

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_LOCAL = ("directrunner", "fnapirunner", "bundlebaseddirectrunner")


@dataclasses.dataclass
class RunOutcome:
    """What a finished run reports.

    Attributes:
      runner: the runner that ran the pipeline.
      metrics: committed Beam counters by name ({} when the runner keeps
        none, e.g. the DaskRunner).
    """

    runner: str
    metrics: dict[str, int]


def _has_option(args: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def check_beam_args(args: list[str]) -> None:
    """Rejects options that no Beam options class knows (typos).

    Beam itself only logs and drops them, so a misspelt ExampleGen flag
    (which lands here as a pass-through option) would go unnoticed.

    Args:
      args: the pass-through Beam options.

    Raises:
      ValueError: naming the unknown options, or a `--runner` among them
        (the runner is a config field of its own).
    """
    for a in args:
        if a.startswith("--runner"):
            raise ValueError(
                f"Pass the runner as --runner, not in the Beam options ({a})."
            )
    from apache_beam.runners.dask import dask_runner  # noqa: F401 (options)

    options = pipeline_options.PipelineOptions(args)
    known = options.get_all_options(drop_default=False)
    everything = options.get_all_options(retain_unknown_options=True)
    unknown = sorted(set(everything) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown flags {['--' + u for u in unknown]}: neither ExampleGen "
            "flags nor Beam pipeline options."
        )


def _export_import_path() -> None:
    """Lets local worker processes import this package.

    multi_processing workers are fresh interpreters started from the
    environment; when the driver found `components` through its working
    directory (`python -m ...` from the repository root) rather than
    PYTHONPATH, they would not, so the root is added to PYTHONPATH.
    """
    import components

    root = os.path.dirname(
        os.path.dirname(os.path.abspath(components.__file__))
    )
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in (os.path.abspath(p) for p in paths):
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


def make_runner(config: config_lib.ExampleGenConfig) -> tuple[Any, list[str]]:
    """The runner (object or name) and the Beam arguments for `config`.

    Args:
      config: the component config (runner, num_workers, dask_address and
        the pass-through `beam_pipeline_args`).

    Returns:
      (runner, args): a PipelineRunner instance or a runner name for Beam
      to resolve, and the full list of Beam command-line options.

    Raises:
      ValueError: the pass-through options name a different runner.
    """
    args = list(config.beam_pipeline_args)
    check_beam_args(args)
    name = config.runner or config_lib.DIRECT_RUNNER
    key = name.lower()
    if key in _LOCAL:
        workers = config.num_workers or os.cpu_count() or 1
        defaults = [
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}",
        ]
        # The user's own direct_* options win over these defaults.
        args = [
            d for d in defaults if not _has_option(args, d[2:].split("=")[0])
        ] + args
        _export_import_path()
        if key == "bundlebaseddirectrunner":
            from apache_beam.runners.direct import direct_runner

            return direct_runner.BundleBasedDirectRunner(), args
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        return fn_runner.FnApiRunner(), args
    if key in ("daskrunner", DASK_RUNNER.lower()):
        from apache_beam.runners.dask import dask_runner

        if config.dask_address and not _has_option(args, "dask_client_address"):
            args.append(f"--dask_client_address={config.dask_address}")
        return dask_runner.DaskRunner(), args
    if key in ("prismrunner", "switchingdirectrunner"):
        logging.warning(
            "%s may download the Prism binary from GitHub; the default "
            "DirectRunner here never does.",
            name,
        )
    return name, args + [f"--runner={name}"]


def run(config: config_lib.ExampleGenConfig, build) -> RunOutcome:
    """Builds a pipeline with `build(pipeline)`, runs it and waits.

    Args:
      config: the component config.
      build: a callable adding the transforms to an empty pipeline.

    Returns:
      The runner used and its counters.

    Raises:
      RuntimeError: the pipeline did not finish in state DONE.
    """
    runner, args = make_runner(config)
    options = pipeline_options.PipelineOptions(args)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline)
    runner_name = runner if isinstance(runner, str) else type(runner).__name__
    logging.info(
        "Running ExampleGen on %s with %s",
        runner_name,
        list(config_lib.redact_args(args)),
    )
    result = pipeline.run()
    try:
        state = result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # DaskRunner's own client.
        if client is not None:
            client.close()
    if state != PipelineState.DONE:
        raise RuntimeError(f"The Beam pipeline ended in state {state}.")
    return RunOutcome(runner_name, _counters(result))


def _counters(result) -> dict[str, int]:
    try:
        found = result.metrics().query()
    except NotImplementedError:  # DaskRunner keeps no metrics.
        return {}
    counters: dict[str, int] = {}
    for c in found.get("counters", []):
        if c.key.metric.namespace == "example_gen":
            name = c.key.metric.name
            counters[name] = counters.get(name, 0) + (c.committed or 0)
    return dict(sorted(counters.items()))
