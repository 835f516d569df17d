"""Restoring CoAtNet weights trained at another resolution or class count.

The paper pre-trains at 224 and fine-tunes at 384 or 512 (§4.1), on
ImageNet-1K after ImageNet-21K or JFT. Only two kinds of variables change
shape between those models:

- the relative bias tables of S3 and S4, [heads, 2h - 1, 2w - 1], which are
  resized once, here, by bilinear interpolation (App. A.1);
- the classifier, when the class count changes, which is re-initialized or
  taken row by row from the source classifier (`head_rows`).

Variables are matched the way `tf.train.Checkpoint` matches them: by walking
the checkpoint's object graph and the live model's in parallel, from the
`model` attribute of the checkpoint root. So checkpoints written by
`tf.train.Checkpoint(model=model)` and trainer checkpoints holding
`model=...` next to an optimizer both work; optimizer slots are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from coatnet_tf import relative_position

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE_ATTRIBUTE = "VARIABLE_VALUE"
_SLOT_MARKER = "/.OPTIMIZER_SLOT/"


@dataclasses.dataclass
class RestoreReport:
    """What `restore_from_checkpoint` did, by model variable path.

    Attributes:
      checkpoint: the checkpoint prefix read.
      restored: variables copied as stored.
      resized: bias tables resized, as (path, source shape, target shape).
      reinitialized: classifier variables re-initialized (class count
        changed and no `head_rows`).
      head_rows_from: classifier variables taken from chosen source rows.
      dropped: checkpoint variables the model has no use for (a source
        classifier when the model has none).
    """

    checkpoint: str
    restored: list[str] = dataclasses.field(default_factory=list)
    resized: list[tuple[str, tuple, tuple]] = dataclasses.field(
        default_factory=list
    )
    reinitialized: list[str] = dataclasses.field(default_factory=list)
    head_rows_from: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{self.checkpoint}: {len(self.restored)} restored, "
            f"{len(self.resized)} bias tables resized, "
            f"{len(self.reinitialized)} re-initialized, "
            f"{len(self.head_rows_from)} from head rows, "
            f"{len(self.dropped)} dropped"
        )


def _resolve(checkpoint_path: str) -> str:
    if tf.io.gfile.isdir(checkpoint_path):
        latest = tf.train.latest_checkpoint(checkpoint_path)
        if latest is None:
            raise FileNotFoundError(f"No checkpoint in {checkpoint_path}.")
        return latest
    if not tf.io.gfile.exists(checkpoint_path + ".index"):
        raise FileNotFoundError(f"No checkpoint at {checkpoint_path}.")
    return checkpoint_path


def _match_variables(model, graph, root_id: int, prefix: str) -> tuple:
    """Pairs live variables with checkpoint keys by object-graph names.

    Returns:
      (matched, live): matched is [(path, variable, key)]; live maps id() of
      every model variable to (path, variable), so unmatched ones show.
    """
    matched, live, seen = [], {}, set()
    stack = [(model, root_id, prefix)]
    while stack:
        obj, node_id, path = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        node = graph.nodes[node_id] if node_id is not None else None
        stored = (
            {c.local_name: c.node_id for c in node.children} if node else {}
        )
        for name, child in tf.train.TrackableView.children(obj).items():
            child_path = f"{path}/{name}"
            child_id = stored.get(name)
            if isinstance(child, tf.Variable):
                live.setdefault(id(child), (child_path, child))
                if child_id is None or id(child) in seen:
                    continue
                seen.add(id(child))
                keys = [
                    a.checkpoint_key
                    for a in graph.nodes[child_id].attributes
                    if a.name == _VALUE_ATTRIBUTE
                ]
                if keys:
                    matched.append((child_path, child, keys[0]))
            else:
                stack.append((child, child_id, child_path))
    return matched, live


def _classifier_values(
    model, src_kernel, src_bias, head_rows, checkpoint, report, paths
):
    """New (kernel, bias) values for the classifier, logged."""
    classifier = model.classifier
    kernel_shape = tuple(classifier.kernel.shape)
    if head_rows is not None:
        rows = np.asarray(head_rows, dtype=np.int64)
        if src_kernel is None:
            raise ValueError(
                f"head_rows given but {checkpoint} has no classifier."
            )
        if rows.shape != (kernel_shape[1],):
            raise ValueError(
                f"head_rows has {rows.size} entries; the model has "
                f"{kernel_shape[1]} classes."
            )
        if rows.min() < 0 or rows.max() >= src_kernel.shape[1]:
            raise ValueError(
                f"head_rows must index the {src_kernel.shape[1]} classes of "
                f"{checkpoint}."
            )
        if src_kernel.shape[0] != kernel_shape[0]:
            raise ValueError(
                f"Classifier input width {src_kernel.shape[0]} in "
                f"{checkpoint} differs from the model's {kernel_shape[0]}."
            )
        logging.info(
            "Classifier initialized from %d of the %d source classes of %s.",
            rows.size,
            src_kernel.shape[1],
            checkpoint,
        )
        report.head_rows_from.extend(paths)
        return src_kernel[:, rows], src_bias[rows]
    source = "no" if src_kernel is None else src_kernel.shape[1]
    logging.warning(
        "Classifier re-initialized: %s has %s classes, the model %d.",
        checkpoint,
        source,
        kernel_shape[1],
    )
    report.reinitialized.extend(paths)
    return (
        classifier.kernel_initializer(kernel_shape),
        classifier.bias_initializer(tuple(classifier.bias.shape)),
    )


def restore_from_checkpoint(
    model,
    checkpoint_path: str,
    head_rows: Sequence[int] | None = None,
) -> RestoreReport:
    """Restores a CoAtNet checkpoint from any resolution and class count.

    Every variable is restored as stored, except (1) relative bias tables,
    resized with `resize_relative_position_bias` to the model's grids (the
    source grid comes from the stored shape, h = (rows + 1) // 2), and (2) a
    classifier whose class count differs, which is re-initialized with a
    warning, or, with `head_rows`, built from the chosen source classes.
    Nothing is assigned unless every variable checks out.

    Args:
      model: a built `CoAtNet` (call it once first).
      checkpoint_path: a checkpoint prefix or a directory (its latest
        checkpoint) whose object graph holds the model at `model`, as
        written by `tf.train.Checkpoint(model=..., ...)`.
      head_rows: optional source class index for each model class (e.g. the
        ImageNet-1K classes inside a 21K classifier). Also applies when the
        class counts are equal.

    Returns:
      A `RestoreReport`.

    Raises:
      FileNotFoundError: no checkpoint at the path.
      ValueError: the model is not built; the checkpoint has no `model`; a
        variable is missing, unused or of an incompatible shape; bad
        `head_rows`.
    """
    if not model.built or not model.variables:
        raise ValueError("Build the model (call it once) before restoring.")
    path = _resolve(checkpoint_path)
    reader = tf.train.load_checkpoint(path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    roots = {c.local_name: c.node_id for c in graph.nodes[0].children}
    if "model" not in roots:
        raise ValueError(
            f"{path} holds {sorted(roots)} at its root, no `model`: write it "
            "with tf.train.Checkpoint(model=model)."
        )
    matched, live = _match_variables(model, graph, roots["model"], "model")
    # Report (and assign) in the model's own variable order.
    order = {id(v): i for i, v in enumerate(model.variables)}
    matched.sort(key=lambda m: order.get(id(m[1]), len(order)))
    report = RestoreReport(checkpoint=path)
    classifier = model.classifier
    head = {}  # id(classifier variable) -> "kernel" | "bias"
    if classifier is not None:
        head = {id(classifier.kernel): "kernel", id(classifier.bias): "bias"}
    _check_coverage(path, reader, matched, live, head, report)

    tables = {id(a.relative_position_bias) for a in model.attention_layers()}
    assignments, source_head = [], {}
    for var_path, var, key in matched:
        value = reader.get_tensor(key)
        source, target = tuple(value.shape), tuple(var.shape)
        if id(var) in head:
            source_head[head[id(var)]] = value
            continue
        if id(var) in tables:
            value = _resized_table(path, key, var_path, value, target)
            if source != target:
                report.resized.append((var_path, source, target))
        elif source != target:
            raise ValueError(
                f"{key} in {path} has shape {list(source)}; {var_path} in "
                f"the model has {list(target)}."
            )
        if source == target:
            report.restored.append(var_path)
        assignments.append((var, value))

    if classifier is not None:
        paths = [live[i][0] for i in head]
        kernel, bias = source_head.get("kernel"), source_head.get("bias")
        if (
            head_rows is None
            and kernel is not None
            and kernel.shape == tuple(classifier.kernel.shape)
        ):
            report.restored.extend(paths)
        else:
            kernel, bias = _classifier_values(
                model, kernel, bias, head_rows, path, report, paths
            )
        assignments += [(classifier.kernel, kernel), (classifier.bias, bias)]

    for var, value in assignments:
        var.assign(tf.cast(value, var.dtype))
    logging.info("Restored %s", report.summary())
    return report


def _check_coverage(path, reader, matched, live, head, report) -> None:
    """Raises unless model and checkpoint hold the same variables.

    The classifier may differ (re-initialized when absent from the
    checkpoint; a source classifier is dropped when the model has none).
    """
    matched_ids = {id(v) for _, v, _ in matched}
    missing = [
        p for i, (p, _) in live.items() if i not in matched_ids | set(head)
    ]
    if missing:
        raise ValueError(f"{path} lacks model variables: {missing}.")
    used = {key for _, _, key in matched}
    unused = []
    for key in reader.get_variable_to_shape_map():
        if (
            not key.startswith("model/")
            or not key.endswith(_VALUE_ATTRIBUTE)
            or _SLOT_MARKER in key
            or key in used
        ):
            continue
        if not head and "/head/classifier/" in key:
            report.dropped.append(key)
        else:
            unused.append(key)
    if unused:
        raise ValueError(f"{path} holds variables the model lacks: {unused}.")


def _resized_table(path, key, var_path, value, target) -> np.ndarray:
    """A stored bias table resized to the model's grid (App. A.1)."""
    if value.ndim != 3 or value.shape[0] != target[0]:
        raise ValueError(
            f"{key} in {path} has shape {list(value.shape)}; {var_path} "
            f"needs a [{target[0]}, 2h - 1, 2w - 1] table."
        )
    relative_position.grid_size(value.shape)  # Odd sizes only.
    height, width = relative_position.grid_size(target)
    return np.asarray(
        relative_position.resize_relative_position_bias(value, height, width)
    )
