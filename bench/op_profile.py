"""Per-op-type time of a TensorFlow function, from a profiler trace.

`op_time_table` runs a function under `tf.profiler.experimental` and sums
the host trace events of every TensorFlow op by op type, so a benchmark
can print where a step's time goes (e.g. "_MklConv2DBackpropFilter: 31%")
next to its throughput. The trace is also left in `logdir` for
TensorBoard's profile plugin.

Event names on the host plane are "<op name>:<op type>", optionally with
"#key=value,...#" metadata; function-call ops (which contain the others)
and runtime events such as "ExecutorState::Process" are left out so that
no time is counted twice. Ops that run concurrently (inter-op parallelism)
each count their full duration, so the sum can exceed the step time.
"""

from __future__ import annotations

import collections
import glob
import os
import re

_CALL_OPS = frozenset(
    {"PartitionedCall", "StatefulPartitionedCall", "While", "If", "Case"}
)
_METADATA = re.compile(r"#.*#$")
_OP_TYPE = re.compile(r"^_?[A-Z][A-Za-z0-9_]*$")


def _op_type(event_name: str) -> str | None:
    """The op type of a host trace event, or None for other events."""
    name = _METADATA.sub("", event_name)
    # Runtime events ("ExecutorState::Process") wrap the ops they run.
    if ":" not in name or "::" in name:
        return None
    op_type = name.rsplit(":", 1)[1]
    if not _OP_TYPE.match(op_type) or op_type in _CALL_OPS:
        return None
    return op_type


def read_host_op_times(logdir: str) -> dict[str, float]:
    """Total seconds per op type in the newest trace under `logdir`.

    Args:
      logdir: a directory `tf.profiler.experimental.start` wrote to.

    Returns:
      {op type: seconds}, summed over all host threads.

    Raises:
      FileNotFoundError: no `.xplane.pb` file under `logdir`.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(
        os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")
    )
    if not paths:
        raise FileNotFoundError(f"No .xplane.pb trace under {logdir}.")
    space = xplane_pb2.XSpace()
    with open(max(paths, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                op_type = _op_type(names.get(event.metadata_id, ""))
                if op_type:
                    totals[op_type] += event.duration_ps * 1e-12
    return dict(totals)


def op_time_table(fn, steps: int, logdir: str, top: int = 12) -> dict:
    """Profiles `steps` calls of `fn` and tabulates time by op type.

    Args:
      fn: a warmed-up callable returning a tensor (e.g. a `tf.function`).
      steps: calls to trace.
      logdir: where the trace is written.
      top: op types listed; the rest are summed as "other".

    Returns:
      {"ms_per_step": {op type: ms}, "fraction": {op type: share of the
      summed op time}}, largest first.
    """
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(steps):
            out = fn()
        out.numpy()
    finally:
        tf.profiler.experimental.stop()
    times = collections.Counter(read_host_op_times(logdir))
    total = sum(times.values()) or 1.0
    table = dict(times.most_common(top))
    rest = total - sum(table.values())
    if rest > 0:
        table["other"] = rest
    return {
        "ms_per_step": {k: 1e3 * v / steps for k, v in table.items()},
        "fraction": {k: v / total for k, v in table.items()},
    }
