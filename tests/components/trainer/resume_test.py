"""A run killed with SIGKILL and started again ends where an unbroken run
ends, bit for bit, with the paper's kinds of train-time randomness on.

Deterministic mode (`deterministic=True`): op determinism and an in-order
input pipeline. What makes the resumed run repeat the unbroken one:

- the input position (file order, shuffle buffer, offsets) is restored from
  the tf.data iterator checkpoint saved with the model, not replayed;
- the inception crop, flip, RandAugment and Mixup/CutMix draw from
  stateless keys of each example's (batch's) position in the stream;
- stochastic depth draws from the model's stateless (seed, step) key,
  which the Trainer sets before every step;
- the checkpoint restores the model, AdamW's moments, its step and the EMA;
  under MirroredStrategy every save first averages the replicas' BatchNorm
  statistics, which a checkpoint holds only as their mean.

So the comparison is exact equality, no tolerance: any difference is a
resume bug. It is made for one device (the CLI, as a user runs it) and for
MirroredStrategy over two logical CPUs (`train_driver`), where each replica
gets its own batches and masks.
"""

import json
import os
import signal
import tempfile
import time

import tensorflow as tf

from artifacts import model as model_io
from tests.components.trainer import processes, testdata

STEPS = 16
EVERY = 4
# Every kind of train-time randomness the paper's recipes use.
OVERRIDES = {
    "deterministic": True,
    "runtime.checkpoint_every_steps": EVERY,
    "runtime.keep_checkpoints": 10,
    "runtime.log_every_steps": EVERY,
    "model.drop_path_rate": 0.1,
    "optimizer.ema_decay": 0.9,
    "augment.mixup_alpha": 0.8,
    "augment.cutmix_alpha": 1.0,
    "augment.randaug_layers": 2,
    "data.eval_split": "",
    "batch_size": 8,
}


def _flag_value(value):
    """A --config_override value: strings as they are, else JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _state(prefix):
    """Every saved value of a checkpoint except its bookkeeping."""
    reader = tf.train.load_checkpoint(prefix)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k
        not in (
            "_CHECKPOINTABLE_OBJECT_GRAPH",
            "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
        )
    }


class KillAndResumeTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp(
            prefix="resume_", dir=os.environ.get("TEST_TMPDIR")
        )
        self.examples = testdata.write_examples(
            os.path.join(self.root, "data"), splits={"train": 48}
        )

    def _main(self, output, log):
        flags = [
            f"--examples={self.examples.uri}",
            "--config=tiny",
            f"--train_steps={STEPS}",
            f"--output={output}",
        ] + [
            f"--config_override={k}={_flag_value(v)}"
            for k, v in OVERRIDES.items()
        ]
        return processes.start_main(flags, log)

    def _driver(self, output, log):
        overrides = {
            **OVERRIDES,
            "train_steps": STEPS,
            "runtime.strategy": "mirrored",
        }
        return processes.start_driver(
            [
                f"--examples={self.examples.uri}",
                f"--output={output}",
                "--cpus=2",
                f"--result={output}.json",
                f"--overrides={json.dumps(overrides)}",
            ],
            log,
        )

    def _kill_resume_compare(self, start):
        straight_dir = os.path.join(self.root, "straight")
        killed_dir = os.path.join(self.root, "killed")
        straight_log = os.path.join(self.root, "straight.txt")
        straight = start(straight_dir, straight_log)
        log = os.path.join(self.root, "killed_1.txt")
        victim = start(killed_dir, log)
        ckpt_dir = os.path.join(killed_dir, model_io.CHECKPOINT_DIR)
        deadline = time.time() + 900
        while time.time() < deadline and victim.poll() is None:
            if tf.train.latest_checkpoint(ckpt_dir) is not None:
                break
            time.sleep(0.05)
        self.assertIsNone(victim.poll(), f"finished before the kill: {log}")
        victim.send_signal(signal.SIGKILL)
        self.assertEqual(victim.wait(), -signal.SIGKILL)
        latest = tf.train.latest_checkpoint(ckpt_dir)
        killed_at = int(latest.rsplit("-", 1)[1])
        # Killed mid-run: some steps done, not all, no model written.
        self.assertBetween(killed_at, EVERY, STEPS - EVERY)
        self.assertFalse(
            tf.io.gfile.exists(os.path.join(killed_dir, "weights"))
        )

        log = os.path.join(self.root, "killed_2.txt")
        resumed = start(killed_dir, log)
        processes.wait(resumed, log, timeout=900)
        processes.wait(straight, straight_log, timeout=900)
        with open(log) as f:
            self.assertIn(f"resumed from {latest}", f.read())

        # The full training state at the end: model, optimizer moments and
        # step, EMA. Then the served (EMA) weights.
        for path in (
            f"{model_io.CHECKPOINT_DIR}/ckpt-{STEPS}",
            f"{model_io.WEIGHTS_DIR}/{model_io.WEIGHTS_PREFIX}",
        ):
            want = _state(os.path.join(straight_dir, path))
            got = _state(os.path.join(killed_dir, path))
            self.assertEqual(sorted(got), sorted(want))
            for key, value in want.items():
                self.assertAllEqual(got[key], value, msg=f"{path}: {key}")

    def test_one_device_cli(self):
        self._kill_resume_compare(self._main)

    def test_mirrored_two_cpus(self):
        self._kill_resume_compare(self._driver)


if __name__ == "__main__":
    tf.test.main()
