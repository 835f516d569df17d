"""Crash anywhere: kill -9 the main job at every step, restart, same model.

The real pipeline binary (`python -m pipeline.pretrain`: pretrain, finetune,
evaluate, export, push) runs at tiny scale in deterministic mode with its
model store on the GCS emulator. One chain of runs: start the job, SIGKILL
it the moment the next component's output appears (and in the middle of each
push, and once at a random moment), restart it, and so on through every
component; then let it finish. A trigger fires only on what the current job
did (the ledger shows it started that component, a file is newer than the
job), never on a killed job's leftovers. The pushed SavedModels' files and
the final checkpoints must be bit-equal to those of an unbroken run (started
alongside, on its own root and store prefix).

Stochastic depth and Mixup are off: exact resume of their in-graph random
draws belongs to the Trainer's own tests; this one is about what the kills
leave behind.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from artifacts import publish
from storage import objstore
from tests import child_env
from tests.storage import emulator

_SETTINGS = [
    "demo_fraction=0.25",
    "data.validation_per_class=8",
    "finetune_data.validation_per_class=8",
    'data.beam_pipeline_args=["--direct_running_mode=in_memory"]',
    'finetune_data.beam_pipeline_args=["--direct_running_mode=in_memory"]',
    "exporter.warmup_batch_sizes=[1]",
    'evaluator.thresholds=[{"metric": "precision_at_1", "lower_bound": 0}]',
    'finetune_evaluator.thresholds=[{"metric": "top1", "lower_bound": 0}]',
]
for _stage, _steps in (("pretrain", 8), ("finetune", 4)):
    _SETTINGS += [
        f"{_stage}.train_steps={_steps}",
        f"{_stage}.eval_every_steps=0",
        f"{_stage}.batch_size=8",
        f"{_stage}.runtime.checkpoint_every_steps={_steps // 2}",
        f"{_stage}.deterministic=true",
        f"{_stage}.model.drop_path_rate=0",
        f"{_stage}.augment.mixup_alpha=0",
    ]
_MODELS = ("coatnet_pretrain", "coatnet")


def _running(root: str, node: str, since: float) -> bool:
    """Whether this job has started `node` (the ledger says RUNNING)."""
    try:
        with open(os.path.join(root, "ledger.json")) as f:
            executions = json.load(f)["executions"]
    except (OSError, ValueError, KeyError):
        return False
    for e in executions:
        started = datetime.datetime.fromisoformat(e["started"]).timestamp()
        if e["component_id"] == node and e["state"] == "RUNNING":
            if started >= since:
                return True
    return False


def _started(node: str):
    """A trigger: this job started `node` (its output directory is made)."""
    return lambda root, store, since: _running(root, node, since)


def _written(node: str, pattern: str):
    """A trigger: this job's run of `node` wrote a file matching `pattern`
    (under the node's outputs) since the job started."""

    def check(root, store, since):
        if not _running(root, node, since):
            return False
        for path in glob.glob(os.path.join(root, node, pattern)):
            try:
                if os.stat(path).st_mtime >= since:
                    return True
            except FileNotFoundError:
                pass
        return False

    return check


def _mid_push(node: str, model: str):
    """A trigger: this job's push of `model` has written objects, not yet
    the completion marker."""

    def check(root, store, since):
        if not _running(root, node, since):
            return False
        files = objstore.list_tree(f"{store}/{model}")
        return bool(files) and not any(
            f.endswith(publish.PUSHED_MARKER) for f in files
        )

    return check


# In DAG order; None kills at a random moment of the resumed Trainer.
_CRASH_POINTS = [
    ("ExampleGen.pretrain writing", _written("ExampleGen.pretrain", "*/*/*")),
    (
        "Trainer.pretrain after its first checkpoint",
        _written("Trainer.pretrain", "model/*/checkpoints/ckpt-4.index"),
    ),
    ("random", None),
    ("Evaluator.pretrain started", _started("Evaluator.pretrain")),
    (
        "Exporter.pretrain SavedModel written",
        _written("Exporter.pretrain", "model/*/Format-Serving/saved_model.pb"),
    ),
    (
        "Pusher.pretrain mid-push",
        _mid_push("Pusher.pretrain", "coatnet_pretrain"),
    ),
    ("ExampleGen.finetune writing", _written("ExampleGen.finetune", "*/*/*")),
    (
        "Trainer.finetune after its first checkpoint",
        _written("Trainer.finetune", "model/*/checkpoints/ckpt-2.index"),
    ),
    ("Evaluator.finetune started", _started("Evaluator.finetune")),
    (
        "Exporter.finetune SavedModel written",
        _written("Exporter.finetune", "model/*/Format-Serving/saved_model.pb"),
    ),
    ("Pusher.finetune mid-push", _mid_push("Pusher.finetune", "coatnet")),
]


def _start(root: str, store: str, log) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "pipeline.pretrain",
        f"--pipeline_root={root}",
        f"--serving_base={store}",
    ] + [f"--set={s}" for s in _SETTINGS]
    return subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env.python_env(),
    )


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def _checkpoint(root: str, node: str) -> dict[str, np.ndarray]:
    (model,) = glob.glob(os.path.join(root, node, "model", "*"))
    reader = tf.train.load_checkpoint(os.path.join(model, "checkpoints"))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
    }


class CrashTest(emulator.EmulatorMixin, absltest.TestCase):
    def test_kill_at_every_step_then_restart_pushes_the_same_model(self):
        tmp = self.create_tempdir().full_path
        ref_root, root = os.path.join(tmp, "ref"), os.path.join(tmp, "crash")
        ref_store, store = self.gcs.uri("ref"), self.gcs.uri("crash")
        ref_log = tempfile.TemporaryFile()
        reference = _start(ref_root, ref_store, ref_log)
        rng = random.Random()
        seed = rng.randrange(1 << 30)
        rng.seed(seed)
        survived = []
        log = tempfile.TemporaryFile()
        for name, trigger in _CRASH_POINTS:
            since = time.time()
            job = _start(root, store, log)
            deadline = time.monotonic() + 900
            if trigger is None:
                # Somewhere in the resumed Trainer (its input replay,
                # tracing or steps), never past the next crash point.
                name = f"random moment (seed {seed})"
                while not _running(root, "Trainer.pretrain", since):
                    if job.poll() is not None or time.monotonic() > deadline:
                        self.fail(f"No resumed Trainer:\n{_tail(log)}")
                    time.sleep(0.02)
                deadline = time.monotonic() + rng.uniform(0.0, 10.0)
            while time.monotonic() < deadline:
                if job.poll() is not None:
                    self.fail(f"The job ended before {name}:\n{_tail(log)}")
                if trigger is not None and trigger(root, store, since):
                    break
                time.sleep(0.02)
            else:
                if trigger is not None:
                    job.kill()
                    self.fail(f"{name} not reached in 900 s:\n{_tail(log)}")
            job.send_signal(signal.SIGKILL)
            job.wait()
            survived.append(name)
        final = _start(root, store, log)
        self.assertEqual(final.wait(timeout=1800), 0, _tail(log))
        self.assertEqual(reference.wait(timeout=1800), 0, _tail(ref_log))
        print(f"crash points survived: {len(survived)}: {survived}")

        for model in _MODELS:
            ref_files = objstore.list_tree(f"{ref_store}/{model}")
            files = objstore.list_tree(f"{store}/{model}")
            # One complete version, no staging leftovers.
            self.assertEqual(files, ref_files, model)
            self.assertIn(f"1/{publish.PUSHED_MARKER}", files)
            self.assertIn("1/saved_model.pb", files)
            for path in files:
                if path.startswith("1/variables/"):
                    self.assertEqual(
                        objstore.read(f"{store}/{model}/{path}").data,
                        objstore.read(f"{ref_store}/{model}/{path}").data,
                        f"{model}/{path} differs from the unbroken run's.",
                    )
        for node in ("Trainer.pretrain", "Trainer.finetune"):
            want, got = _checkpoint(ref_root, node), _checkpoint(root, node)
            self.assertEqual(sorted(got), sorted(want), node)
            for name, value in want.items():
                if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
                    continue
                np.testing.assert_array_equal(got[name], value, name)


if __name__ == "__main__":
    absltest.main()
