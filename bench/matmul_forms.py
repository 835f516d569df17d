r"""How fast each form of one dense layer runs on this CPU, fp32 and bf16.

A 1x1 convolution or dense layer (x [N, C] times W [C, O], plus a bias,
maybe a GELU) can reach TensorFlow's CPU runtime in several forms, and
with oneDNN each form is a different primitive: a plain `MatMul` runs as
oneDNN's matmul, `MatMul` + `BiasAdd` (+ GELU) is fused by the graph
optimizer into one inner-product primitive, a 1x1 `Conv2D` + `BiasAdd`
into a convolution. Which kernel a primitive picks depends on the data
type and, for the inner product, on whether the weights are graph
constants (then TensorFlow lets oneDNN choose a blocked weight layout and
caches the reordered weights) or variables (plain layout). On a CPU with
AMX the bf16 inner product on variable weights falls back to a kernel
without AMX, which is why coatnet_tf's bf16 gain stays far below the bf16
matmul peak (docs/performance.md, "On an Intel Xeon with AMX").

Prints one JSON object: `cpu`, the shape, and per form and dtype the
median milliseconds and GFLOP/s over interleaved `--rounds`, and per
form `bfloat16_speedup` (float32 time / bfloat16 time). The output of
each call is reduced to one element before it leaves the graph, so no
host copy is timed.

    bazel run //bench:matmul_forms                  # coatnet-0's S1 expansion
    bazel run //bench:matmul_forms -- --rows=12544 --depth=192 --width=768
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app, flags

from bench.cpu import bf16_support, cpu_info
from bench.model_worker import timed

_ROWS = flags.DEFINE_integer(
    "rows", 50176, "N: pixels of the batch (16 x 56 x 56)."
)
_DEPTH = flags.DEFINE_integer("depth", 96, "C: input channels.")
_WIDTH = flags.DEFINE_integer("width", 384, "O: output channels.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_CALLS = flags.DEFINE_integer("calls", 5, "Timed calls per round.")

FORMS = (
    "matmul",
    "matmul_bias",
    "matmul_bias_gelu",
    "matmul_bias_gelu_const_weights",
    "conv1x1_bias",
    "batch_matmul_bias",
)


def _functions(tf, dtype, rows: int, depth: int, width: int) -> dict:
    """{form: a tf.function computing x W (+ b, + GELU) in that form}."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = tf.cast(rng.normal(size=[rows, depth]).astype("float32"), dtype)
    w_value = (rng.normal(size=[depth, width]) / depth**0.5).astype("float32")
    b_value = rng.normal(size=[width]).astype("float32")
    w = tf.Variable(tf.cast(w_value, dtype))
    b = tf.Variable(tf.cast(b_value, dtype))

    def gelu(y):
        return tf.nn.gelu(y, approximate=False)

    def const_weights():
        # Graph constants: the optimizer folds the casts.
        wc = tf.cast(tf.constant(w_value), dtype)
        bc = tf.cast(tf.constant(b_value), dtype)
        return gelu(tf.nn.bias_add(tf.matmul(x, wc), bc))

    bodies = {
        "matmul": lambda: tf.matmul(x, w),
        "matmul_bias": lambda: tf.nn.bias_add(tf.matmul(x, w), b),
        "matmul_bias_gelu": lambda: gelu(tf.nn.bias_add(tf.matmul(x, w), b)),
        "matmul_bias_gelu_const_weights": const_weights,
        "conv1x1_bias": lambda: tf.nn.bias_add(
            tf.nn.conv2d(x[None, None], w[None, None], 1, "VALID"), b
        ),
        "batch_matmul_bias": lambda: tf.matmul(x[None], w) + b,
    }

    def first_element(body):
        # One element leaves the graph; the whole product is computed.
        return tf.function(lambda: tf.reshape(body(), [-1])[:1])

    return {form: first_element(body) for form, body in bodies.items()}


def measure(rows: int, depth: int, width: int, rounds: int, calls: int):
    """Times every form in float32 and bfloat16, interleaved.

    Args:
      rows, depth, width: N, C and O of x [N, C] W [C, O].
      rounds: interleaved rounds (every form and dtype once per round).
      calls: timed calls per form and round.

    Returns:
      {form: {"float32": {"ms", "gflops"}, "bfloat16": {...},
      "bfloat16_speedup"}}.
    """
    import tensorflow as tf

    dtypes = {"float32": tf.float32, "bfloat16": tf.bfloat16}
    fns = {
        name: _functions(tf, dtype, rows, depth, width)
        for name, dtype in dtypes.items()
    }
    for per_dtype in fns.values():  # Trace and warm up.
        for fn in per_dtype.values():
            fn().numpy()
    seconds = {(f, d): [] for f in FORMS for d in dtypes}
    for _ in range(rounds):
        for form in FORMS:
            for name in dtypes:
                seconds[form, name].append(timed(fns[name][form], calls))
    flops = 2.0 * rows * depth * width
    report = {}
    for form in FORMS:
        entry = {}
        for name in dtypes:
            median = statistics.median(seconds[form, name])
            entry[name] = {"ms": 1e3 * median, "gflops": flops / median / 1e9}
        entry["bfloat16_speedup"] = (
            entry["float32"]["ms"] / entry["bfloat16"]["ms"]
        )
        report[form] = entry
    return report


def main(argv):
    del argv
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cpu = cpu_info()
    report = {
        "cpu": {**cpu, "bf16_isa": bf16_support(cpu.get("isa"))},
        "shape": {
            "rows": _ROWS.value,
            "depth": _DEPTH.value,
            "width": _WIDTH.value,
        },
        "rounds": _ROUNDS.value,
        "calls": _CALLS.value,
        "forms": measure(
            _ROWS.value, _DEPTH.value, _WIDTH.value, _ROUNDS.value, _CALLS.value
        ),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
