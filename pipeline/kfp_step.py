r"""One pipeline step as a command line: the command of every compiled step.

A compiled Kubeflow pipeline (pipeline/kfp_compile.py) runs each node of
our DAG as a container whose command is

    python -m pipeline.kfp_step --component=Trainer --node=Trainer.pretrain \
      --pipeline=pretrain --ledger_root=gs://bucket/root \
      --config='{...TrainerConfig JSON...}' \
      --input=examples=gs://.../examples --output=model=gs://.../model

It does what the local runner (pipeline/dag.py) does for one node: it
resolves the node's resolver inputs (`--resolve=key=<spec JSON>`, e.g. the
latest blessed model) over the run ledger under `--ledger_root`, runs the
component through `components.base.execute` (which writes the same
`_artifact.json` and `_execution.json` records as any other run), and
records the finished execution in the ledger, so the next run's resolvers
(and `pipeline:report`) see runs made by the orchestrator too.
`--blessed_path` receives 1 or 0 from the `blessing` output: the value a
compiled pipeline's blessing gate (dsl.If) reads.

Exit codes: 0 done, 1 the component failed, 2 bad flags.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags, logging  # noqa: E402

from components import base  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("component", None, "ExampleGen, Trainer, Evaluator, ...")
flags.DEFINE_string("node", None, "The DAG node id, e.g. Trainer.pretrain.")
flags.DEFINE_string("pipeline", "", "The pipeline (job) name, e.g. retrain.")
flags.DEFINE_string("run_id", "", "The orchestrator's run (job) name.")
flags.DEFINE_string("config", "{}", "The node's config as JSON.")
flags.DEFINE_multi_string("input", [], "key=URI of an input artifact.")
flags.DEFINE_multi_string(
    "resolve", [], "key=<resolver spec JSON>: an input looked up in the ledger."
)
flags.DEFINE_multi_string("output", [], "key=URI of an output artifact.")
flags.DEFINE_string(
    "ledger_root", "", "The pipeline root whose ledger.json to read and append."
)
flags.DEFINE_string(
    "blessed_path", "", "Where to write 1 or 0: the `blessing` output."
)
flags.DEFINE_integer(
    "ledger_lock_seconds", 600, "How long to wait for the ledger's lock."
)


def component_classes() -> dict[str, type]:
    """The components a step can run, by `SPEC.name`."""
    from components.evaluator.component import Evaluator
    from components.example_gen.component import ExampleGen
    from components.exporter.component import Exporter
    from components.pusher.component import Pusher
    from components.trainer.component import Trainer

    return {
        c.SPEC.name: c
        for c in (ExampleGen, Trainer, Evaluator, Exporter, Pusher)
    }


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--{flag}={item!r}: expected key=value.")
        pairs[key] = value
    return pairs


def resolve_inputs(
    spec: base.ComponentSpec,
    uris: dict[str, str],
    resolver_specs: dict[str, str],
    ledger_root: str,
) -> dict[str, base.Artifact]:
    """The input artifacts: read from URIs, then looked up by resolvers.

    Args:
      spec: the component's spec (input types).
      uris: input key to artifact URI.
      resolver_specs: input key to a resolver's spec as JSON.
      ledger_root: the pipeline root whose ledger resolvers read.

    Returns:
      The inputs; a resolver that finds nothing leaves its key out.

    Raises:
      ValueError: an unknown key, an unreadable artifact or a resolver
        without a ledger root; the message names the flag.
    """
    from pipeline import pipelines
    from pipeline import store as store_lib

    inputs = {}
    for key, uri in uris.items():
        if key not in spec.inputs:
            raise ValueError(
                f"--input={key}=...: {spec.name} has no input {key!r}; "
                f"expected one of {sorted(spec.inputs)}."
            )
        try:
            inputs[key] = base.Artifact.read(uri, spec.inputs[key])
        except base.ArtifactError as e:
            raise ValueError(f"--input={key}={uri}: {e}") from e
    if resolver_specs and not ledger_root:
        raise ValueError("--resolve needs --ledger_root (the run ledger).")
    store = store_lib.ArtifactStore(ledger_root) if ledger_root else None
    for key, text in resolver_specs.items():
        try:
            resolver = pipelines.resolver_from_spec(json.loads(text))
        except (json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"--resolve={key}=...: {e}") from e
        artifact = resolver(store)
        logging.info(
            "%s resolved to %s", key, artifact.uri if artifact else "nothing"
        )
        if artifact is not None:
            inputs[key] = artifact
    return inputs


def record(
    ledger_root: str,
    *,
    run_id: str,
    pipeline: str,
    node_id: str,
    component: base.Component,
    inputs: dict[str, base.Artifact],
    config,
    outputs: dict[str, base.Artifact],
    lock_seconds: float,
) -> None:
    """Appends the finished execution to the ledger, under the root's lock.

    Raises:
      lock.LockHeldError: the lock stayed held for `lock_seconds`.
    """
    from pipeline import dag, lock
    from pipeline import store as store_lib

    node = dag.Node(node_id, component, config)
    config_json = base.config_to_json(config)
    deadline = time.time() + lock_seconds
    while True:
        try:
            with lock.RunLock(ledger_root):
                store = store_lib.ArtifactStore(ledger_root)
                execution = store.start(
                    run_id=run_id,
                    pipeline=pipeline,
                    component_id=node_id,
                    cache_key=dag.cache_key(node, inputs, config_json),
                    inputs=inputs,
                    config=config_json,
                    cache_parts=dag.cache_parts(node, inputs, config_json),
                )
                store.finish(execution, store_lib.COMPLETE, outputs)
                return
        except lock.LockHeldError:
            if time.time() > deadline:
                raise
            time.sleep(5)


def run_step() -> dict[str, base.Artifact]:
    """Runs the step the flags describe.

    Returns:
      The output artifacts.

    Raises:
      ValueError: bad flags (the message names the flag).
    """
    classes = component_classes()
    if FLAGS.component not in classes:
        raise ValueError(
            f"--component={FLAGS.component!r}: expected one of "
            f"{sorted(classes)}."
        )
    cls = classes[FLAGS.component]
    try:
        config = base.config_from_json(
            cls.SPEC.config_type, json.loads(FLAGS.config)
        )
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"--config: {e}") from e
    if FLAGS.component == "Trainer":
        # As the trainer CLI: TPU and multi-worker set-up precede any other
        # TensorFlow work in the process.
        from components.trainer import strategy as strategy_lib

        rt = config.runtime
        component = cls(
            strategy_lib.create_strategy(
                rt.strategy, rt.tpu, rt.zone, rt.project
            )
        )
    else:
        component = cls()
    output_uris = _pairs(FLAGS.output, "output")
    missing = set(cls.SPEC.outputs) - set(output_uris)
    if missing:
        raise ValueError(f"--output: missing {sorted(missing)}.")
    inputs = resolve_inputs(
        cls.SPEC,
        _pairs(FLAGS.input, "input"),
        _pairs(FLAGS.resolve, "resolve"),
        FLAGS.ledger_root,
    )
    outputs = base.execute(component, inputs, output_uris, config)
    if FLAGS.blessed_path:
        blessed = int(outputs["blessing"].properties.get("blessed", 0))
        # A local file the orchestrator collects as an output parameter.
        os.makedirs(os.path.dirname(FLAGS.blessed_path) or ".", exist_ok=True)
        with open(FLAGS.blessed_path, "w") as f:
            f.write(str(blessed))
    if FLAGS.ledger_root:
        record(
            FLAGS.ledger_root,
            run_id=FLAGS.run_id or "kfp",
            pipeline=FLAGS.pipeline,
            node_id=FLAGS.node or cls.SPEC.name,
            component=component,
            inputs=inputs,
            config=config,
            outputs=outputs,
            lock_seconds=FLAGS.ledger_lock_seconds,
        )
    return outputs


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        outputs = run_step()
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    for key, artifact in outputs.items():
        print(json.dumps({"output": key, **artifact.to_json()}, default=str))


if __name__ == "__main__":
    app.run(main)
