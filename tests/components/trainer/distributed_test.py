"""The trainer under MirroredStrategy and MultiWorkerMirroredStrategy on CPU.

Each run is its own process: logical CPU devices, op determinism and the
multi-worker runtime are fixed when TensorFlow starts.
"""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from artifacts import model as model_io
from components import base
from tests.components.trainer import processes, testdata

# Plain inputs (no random crop, flip, RandAugment or Mixup), read in file
# order, so that every run sees the same examples in the same batches.
PLAIN = {
    "augment.inception_crop": False,
    "augment.flip": False,
    "augment.randaug_layers": 0,
    "augment.mixup_alpha": 0.0,
    "data.shuffle_buffer_size": 1,
    "deterministic": True,
}


def _model_weights(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith("model/")
    }


class MirroredTest(tf.test.TestCase):
    def test_two_replicas_follow_one_device(self):
        """Same global batch, same trajectory: 1 CPU vs 2 logical CPUs.

        The model's BatchNorm normalizes each replica's half of the batch
        with that half's statistics (it is not synchronized), a different
        computation from the one-device statistics on general data. The data
        here is written so that each global batch of 8 holds the same 4
        examples twice: the halves and the whole then have the same
        statistics, and both runs compute the same function up to float32
        rounding (per-replica sums, then a cross-replica sum, instead of one
        sum). Tolerances:

        - per-step loss, gradient norm, accuracy, lr: rtol 1e-5 (measured
          2e-7). The gradient norm (before clipping) would show a gradient
          averaged over the per-replica batch instead of the global one
          (2x), which Adam's scale invariance hides from the loss.
        - final evaluation: rtol 1e-4 (measured 3e-5), from the weights:
        - trainable weights: atol = peak lr x steps. A weight whose true
          gradient is 0 (a conv bias followed by BatchNorm, whose mean
          subtraction cancels it) gets a rounding-level gradient that Adam
          normalizes into a step of up to lr; measured 2e-4, everything
          else agrees to ~1e-6.
        - BatchNorm moving variances: rtol 1e-2. Their update applies
          Bessel's n/(n-1) with the replica's n (half the global one):
          0.8% per update at the 4x4 grid, times the momentum's 0.01, over
          8 steps; measured 3e-3.
        """
        root = tempfile.mkdtemp(
            prefix="mirrored_", dir=os.environ.get("TEST_TMPDIR")
        )
        examples = testdata.write_examples(
            os.path.join(root, "data"),
            splits={"train": 32, "validation": 8},
            num_shards=1,
            block_repeat=4,
        )
        overrides = {
            **PLAIN,
            "batch_size": 8,
            "train_steps": 8,
            "runtime.log_every_steps": 1,
        }
        procs = {}
        for cpus, strategy in ((1, "default"), (2, "mirrored")):
            args = [
                f"--examples={examples.uri}",
                f"--output={root}/model_{cpus}",
                f"--cpus={cpus}",
                f"--result={root}/result_{cpus}.json",
                "--overrides="
                + json.dumps({**overrides, "runtime.strategy": strategy}),
            ]
            log = f"{root}/log_{cpus}.txt"
            procs[cpus] = (processes.start_driver(args, log), log)
        for proc, log in procs.values():
            processes.wait(proc, log, timeout=900)
        one, two = (
            json.load(open(f"{root}/result_{cpus}.json")) for cpus in (1, 2)
        )
        self.assertEqual((one["replicas"], two["replicas"]), (1, 2))
        self.assertLen(one["history"], 8)
        for key in ("loss", "grad_norm", "learning_rate", "accuracy"):
            self.assertAllClose(
                [h[key] for h in two["history"]],
                [h[key] for h in one["history"]],
                rtol=1e-5,
                msg=key,
            )
        # The loss moved: the comparison is over a real trajectory.
        self.assertLess(one["history"][-1]["loss"], one["history"][0]["loss"])
        self.assertAllClose(two["eval"], one["eval"], rtol=1e-4)
        a = _model_weights(f"{root}/model_1/weights/model")
        b = _model_weights(f"{root}/model_2/weights/model")
        self.assertEqual(sorted(a), sorted(b))
        lr_steps = 3e-3 * 8  # The tiny recipe's peak lr, 8 steps.
        for key in a:
            if "/moving_variance/" in key:
                self.assertAllClose(b[key], a[key], rtol=1e-2, msg=key)
            else:
                self.assertAllClose(
                    b[key], a[key], rtol=0, atol=lr_steps, msg=key
                )


class MultiWorkerTest(tf.test.TestCase):
    def test_two_workers_train_and_checkpoint(self):
        root = tempfile.mkdtemp(
            prefix="multi_worker_", dir=os.environ.get("TEST_TMPDIR")
        )
        examples = testdata.write_examples(
            os.path.join(root, "data"), splits={"train": 32, "validation": 8}
        )
        output = os.path.join(root, "model")
        ports = [processes.free_port(), processes.free_port()]
        procs = []
        for index in range(2):
            log = os.path.join(root, f"worker_{index}.txt")
            proc = processes.start_main(
                [
                    f"--examples={examples.uri}",
                    f"--output={output}",
                    "--config=tiny",
                    "--strategy=multi_worker",
                    "--train_steps=6",
                    "--batch_size=8",
                    "--config_override=runtime.checkpoint_every_steps=3",
                    "--config_override=runtime.log_every_steps=3",
                    "--config_override=augment.randaug_layers=0",
                ],
                log,
                TF_CONFIG=processes.tf_config(ports, index),
            )
            procs.append((proc, log))
        for proc, log in procs:
            processes.wait(proc, log, timeout=900)
        manager_dir = os.path.join(output, model_io.CHECKPOINT_DIR)
        self.assertEqual(
            tf.train.latest_checkpoint(manager_dir),
            os.path.join(manager_dir, "ckpt-6"),
        )
        self.assertTrue(
            tf.io.gfile.exists(os.path.join(manager_dir, "ckpt-3.index"))
        )
        artifact = base.Artifact.read(output, base.MODEL)
        self.assertEqual(artifact.properties["step"], 6)
        self.assertTrue(np.isfinite(artifact.properties["eval"]["loss"]))
        # The worker wrote only to its scratch folder, and removed it.
        self.assertEqual(
            sorted(tf.io.gfile.listdir(output)),
            sorted(
                [
                    base.ARTIFACT_FILE,
                    base.EXECUTION_FILE,
                    "checkpoints",
                    "labels.txt",
                    "logs",
                    "model_spec.json",
                    "weights",
                ]
            ),
        )
        # Both workers ran every step (each logs the all-reduced metrics).
        for _, log in procs:
            with open(log) as f:
                self.assertIn("step 6/6", f.read())


if __name__ == "__main__":
    tf.test.main()
