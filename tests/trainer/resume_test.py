"""A run killed with SIGKILL and started again ends where an uninterrupted
run ends, bit for bit.

Deterministic mode (`deterministic=True`): op determinism, a serial input
pipeline, and on resume the input stream is replayed up to the restored
step, so the resumed run sees the very batches the uninterrupted one saw,
augmented alike (RandAugment and Mixup draw from stateful random ops, which
the replay advances exactly as the first run did). The checkpoint restores
the model, AdamW's moments, its step and the EMA. So the comparison is exact
equality, no tolerance: any difference is a resume bug.
"""

import os
import signal
import tempfile
import time

import tensorflow as tf

from artifacts import model as model_io
from tests.trainer import processes, testdata

STEPS = 20
EVERY = 4


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
    def test_sigkill_then_resume_equals_uninterrupted(self):
        root = tempfile.mkdtemp(
            prefix="resume_", dir=os.environ.get("TEST_TMPDIR")
        )
        examples = testdata.write_examples(
            os.path.join(root, "data"), splits={"train": 48, "validation": 8}
        )
        flags = [
            f"--examples={examples.uri}",
            "--config=tiny",
            f"--train_steps={STEPS}",
            "--config_override=deterministic=true",
            f"--config_override=runtime.checkpoint_every_steps={EVERY}",
            "--config_override=runtime.keep_checkpoints=10",
            f"--config_override=runtime.log_every_steps={EVERY}",
            "--config_override=optimizer.ema_decay=0.9",
            "--config_override=augment.mixup_alpha=0.8",
            "--config_override=data.eval_split=",
        ]
        straight_dir = os.path.join(root, "straight")
        killed_dir = os.path.join(root, "killed")
        straight_log = os.path.join(root, "straight.txt")
        straight = processes.start_main(
            flags + [f"--output={straight_dir}"], straight_log
        )
        log = os.path.join(root, "killed_1.txt")
        victim = processes.start_main(flags + [f"--output={killed_dir}"], log)
        ckpt_dir = os.path.join(killed_dir, model_io.CHECKPOINT_DIR)
        deadline = time.time() + 900
        latest = None
        while time.time() < deadline and victim.poll() is None:
            latest = tf.train.latest_checkpoint(ckpt_dir)
            if latest is not None:
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

        log = os.path.join(root, "killed_2.txt")
        resumed = processes.start_main(flags + [f"--output={killed_dir}"], log)
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


if __name__ == "__main__":
    tf.test.main()
