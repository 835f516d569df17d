"""One measured model function per process, for `model_bench`.

Why a process each: TensorFlow's BFC allocator keeps the memory it pooled
for the process's lifetime, so in one process holding several models a
peak resident size would be the largest of them all, and a forward pass
measured after a training step would report the training step's pool.
Here each (kernel setting, policy, forward or training step) is built,
warmed up and timed in its own worker process, started with
multiprocessing's 'spawn' context (a fresh interpreter: no TensorFlow
state inherited), and its peak resident memory is its own.

The parent (`model_bench`) drives the interleaved rounds over a pipe:

  worker -> parent  {"ready": True, "pid": ...} once warmed up
  parent -> worker  ("time", steps)           -> {"seconds_per_step",
                                                   "peak_rss_bytes",
                                                   "rss_bytes"}
  parent -> worker  ("profile", steps, logdir) -> {"op_profile": ...}
  parent -> worker  ("stop",)

Any exception in the worker is sent back as {"error": traceback} and
raised in the parent as `WorkerError`; a worker that dies (e.g. killed
for memory) is reported with its exit code.

Peak resident memory per measurement: the worker resets the kernel's
high-water mark (writing "5" to /proc/self/clear_refs) before the timed
steps and reads VmHWM from /proc/self/status after them. Where
clear_refs is not writable the figure is `getrusage`'s ru_maxrss, the
worker's peak since it started (warm-up included), and `PEAK_RSS_METHODS`
names which one a figure is.
"""

from __future__ import annotations

import os
import resource
import time
import traceback

GIB = 2**30
# How a peak was taken: the high-water mark reset before each measurement,
# or the process's peak since it started.
VMHWM = "vmhwm_reset_per_measurement"
MAXRSS = "ru_maxrss_since_worker_start"
PEAK_RSS_METHODS = (VMHWM, MAXRSS)


class WorkerError(RuntimeError):
    """A worker failed or died."""


def memory_status() -> dict[str, int]:
    """VmHWM and VmRSS of this process in bytes ({} where unreadable)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024  # kB.
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Resets this process's VmHWM to its current RSS; False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return "VmHWM" in memory_status()


def peak_rss(reset: bool) -> tuple[int, str]:
    """The peak resident bytes since `reset_peak_rss`, and the method.

    Args:
      reset: what `reset_peak_rss` returned before the measurement.

    Returns:
      (bytes, one of `PEAK_RSS_METHODS`).
    """
    if reset:
        status = memory_status()
        if "VmHWM" in status:
            return status["VmHWM"], VMHWM
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, MAXRSS


def timed(fn, steps: int) -> float:
    """Seconds per call of `fn` (which returns a tensor), over `steps`."""
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    out.numpy()  # Waits for the last step.
    return (time.perf_counter() - start) / steps


def make_steps(tf, model, optimizer, images, labels):
    """tf.functions (no XLA) for inference and one AdamW training step."""

    # No autograph, as the trainer: the model branches on no tensor. The
    # forward is traced for a batch of any size, as a served model is: a
    # graph rewrite (oneDNN's LayerNorm, `cpu_ops.layer_norm`) needs it.
    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, *images.shape[1:]])],
    )
    def infer(x):
        return model(x, training=False)

    def forward():
        return infer(images)

    @tf.function(autograph=False)
    def train_step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)  # float32 logits.
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return forward, train_step


def _build(job: dict):
    """The job's warmed-up step function (TensorFlow imported here)."""
    import tensorflow as tf
    import tf_keras

    import coatnet_tf
    from components.trainer import optimization

    threading = tf.config.threading
    threading.set_intra_op_parallelism_threads(job["intra_op_threads"])
    threading.set_inter_op_parallelism_threads(job["inter_op_threads"])
    tf_keras.mixed_precision.set_global_policy(job["policy"])
    tf_keras.utils.set_random_seed(0)
    size, batch = job["image_size"], job["batch"]
    model = coatnet_tf.create_model(
        job["variant"],
        num_classes=1000,
        image_size=size,
        gelu_approximate=job["gelu_approximate"],
        kernels=job["setting"],
    )
    images = tf.random.normal([batch, size, size, 3])
    labels = tf.random.uniform([batch], 0, 1000, tf.int32)
    model(images[:1], training=False)
    optimizer = optimization.FusedAdamW(
        learning_rate=1e-4, weight_decay=0.05, jit_compile=False
    )
    forward, train_step = make_steps(tf, model, optimizer, images, labels)
    fn = forward if job["kind"] == "forward" else train_step
    for _ in range(job["warmup"]):
        fn().numpy()
    return fn


def worker_main(conn, job: dict) -> None:
    """The worker process: builds the job's function, then serves commands.

    Args:
      conn: its end of the pipe to the parent.
      job: variant, image_size, batch, setting, policy, kind ("forward" or
        "train_step"), warmup, gelu_approximate, intra_op_threads,
        inter_op_threads.
    """
    try:
        fn = _build(job)
        conn.send({"ready": True, "pid": os.getpid()})
        while True:
            message = conn.recv()
            command = message[0]
            if command == "stop":
                break
            if command == "time":
                reset = reset_peak_rss()
                seconds = timed(fn, message[1])
                peak, method = peak_rss(reset)
                conn.send(
                    {
                        "seconds_per_step": seconds,
                        "peak_rss_bytes": peak,
                        "peak_rss_method": method,
                        "rss_bytes": memory_status().get("VmRSS", 0),
                    }
                )
            elif command == "profile":
                from bench import op_profile

                table = op_profile.op_time_table(fn, message[1], message[2])
                conn.send({"op_profile": table})
            else:
                raise ValueError(f"Unknown command {message!r}.")
    except Exception:  # Reported to the parent, which raises it.
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, context, name: str, job: dict):
        """Starts the worker; `ready` waits for its warm-up.

        Args:
          context: a multiprocessing context ('spawn').
          name: for messages, e.g. "fused/float32/train_step".
          job: see `worker_main`.
        """
        self.name = name
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=worker_main, args=(child, job), name=name, daemon=True
        )
        self.process.start()
        child.close()  # The parent's copy; EOF then means the worker died.
        self.pid = None

    def _died(self) -> WorkerError:
        self.process.join(10)
        code = self.process.exitcode
        hint = " (SIGKILL: out of memory?)" if code == -9 else ""
        return WorkerError(f"Worker {self.name} exited with code {code}{hint}.")

    def _receive(self) -> dict:
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):  # OSError: the connection was reset.
            raise self._died() from None
        if "error" in reply:
            raise WorkerError(f"Worker {self.name} failed:\n{reply['error']}")
        return reply

    def ready(self) -> None:
        """Waits for the worker to have built and warmed up its function."""
        self.pid = self._receive()["pid"]

    def call(self, *message) -> dict:
        """Sends a command and returns the worker's reply."""
        try:
            self.conn.send(message)
        except OSError:  # The worker is gone.
            raise self._died() from None
        return self._receive()

    def stop(self) -> None:
        """Asks the worker to exit; terminates it if it does not."""
        if self.process.is_alive():
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
            self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        self.conn.close()
