"""Model validation as TFX/TFMA does it: value and change thresholds.

A candidate is blessed when every threshold passes. A value threshold
bounds a metric (`lower_bound <= value <= upper_bound`). A change threshold
compares the candidate with the baseline (the currently pushed model),
following TFMA's `GenericChangeThreshold`: with `diff = candidate -
baseline` and `ratio = diff / baseline`,

  higher_is_better: diff >= absolute and ratio >= relative
  lower_is_better:  diff <= absolute and ratio <= relative

(an unset bound always passes). With no baseline the candidate is "rubber
stamped" as in TFX: change thresholds are skipped and only value thresholds
decide.

Metric names address the main split ("top1") or an extra evaluation set
("<set name>/top1"). The compact flag syntax parsed by `parse_thresholds`:

  value:  "top1>=0.7", "ece<=0.05"
  change: "top1>=-1e-10" (absolute diff), "loss<=2%" (relative diff)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

HIGHER_IS_BETTER = "higher_is_better"
LOWER_IS_BETTER = "lower_is_better"


@dataclasses.dataclass(frozen=True)
class MetricThreshold:
    """One gate on one metric.

    Attributes:
      metric: the metric's name in metrics.json ("top1", "v2/top1").
      lower_bound: value threshold: the metric must be >= this.
      upper_bound: value threshold: the metric must be <= this.
      direction: for change thresholds, `HIGHER_IS_BETTER` or
        `LOWER_IS_BETTER`; empty for a value-only threshold.
      absolute: change threshold on candidate - baseline.
      relative: change threshold on (candidate - baseline) / baseline.
    """

    metric: str
    lower_bound: float | None = None
    upper_bound: float | None = None
    direction: str = ""
    absolute: float | None = None
    relative: float | None = None

    def __post_init__(self):
        if self.direction not in ("", HIGHER_IS_BETTER, LOWER_IS_BETTER):
            raise ValueError(
                f"Threshold on {self.metric!r}: direction must be "
                f"{HIGHER_IS_BETTER!r} or {LOWER_IS_BETTER!r}, got "
                f"{self.direction!r}."
            )
        has_change = self.absolute is not None or self.relative is not None
        if has_change and not self.direction:
            raise ValueError(
                f"Threshold on {self.metric!r} has a change bound but no "
                "direction."
            )

    @property
    def is_change(self) -> bool:
        return bool(self.direction)


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of one threshold.

    Attributes:
      threshold: the gate.
      kind: "value" or "change".
      passed: True, False, or None when skipped (no baseline).
      value: the candidate's metric.
      baseline: the baseline's metric (change checks).
      message: a sentence saying why.
    """

    threshold: MetricThreshold
    kind: str
    passed: bool | None
    value: float | None
    baseline: float | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.threshold.metric,
            "kind": self.kind,
            "passed": self.passed,
            "value": self.value,
            "baseline": self.baseline,
            "message": self.message,
        }


def validate(
    thresholds: Sequence[MetricThreshold],
    candidate: Mapping[str, float],
    baseline: Mapping[str, float] | None,
) -> tuple[bool, list[Check]]:
    """Applies every threshold; blessed when none fails.

    Args:
      thresholds: the gates.
      candidate: flat metric name -> value of the candidate model.
      baseline: the same for the baseline model, or None (no model pushed
        yet): change thresholds are then skipped.

    Returns:
      (blessed, the checks in threshold order).
    """
    checks = []
    for t in thresholds:
        value = candidate.get(t.metric)
        if t.lower_bound is not None or t.upper_bound is not None:
            checks.append(_value_check(t, value))
        if t.is_change:
            base = None if baseline is None else baseline.get(t.metric)
            checks.append(_change_check(t, value, base, baseline is None))
    return all(c.passed is not False for c in checks), checks


def _value_check(t: MetricThreshold, value: float | None) -> Check:
    if value is None or math.isnan(value):
        return Check(
            t, "value", False, value, None, f"{t.metric} was not computed."
        )
    low = -math.inf if t.lower_bound is None else t.lower_bound
    high = math.inf if t.upper_bound is None else t.upper_bound
    passed = low <= value <= high
    return Check(
        t,
        "value",
        passed,
        value,
        None,
        f"{t.metric}={value:.6g} {'within' if passed else 'outside'} "
        f"[{low:.6g}, {high:.6g}].",
    )


def _change_check(
    t: MetricThreshold,
    value: float | None,
    base: float | None,
    no_baseline: bool,
) -> Check:
    if no_baseline:
        return Check(
            t,
            "change",
            None,
            value,
            None,
            f"{t.metric}: no baseline model, change threshold skipped.",
        )
    if value is None or base is None or math.isnan(value) or math.isnan(base):
        return Check(
            t,
            "change",
            False,
            value,
            base,
            f"{t.metric} missing for the candidate or the baseline.",
        )
    diff = value - base
    ratio = math.nan if math.isclose(base, 0.0) else diff / base
    higher = t.direction == HIGHER_IS_BETTER
    absolute = t.absolute
    if absolute is None:
        absolute = -math.inf if higher else math.inf
    relative = t.relative
    if relative is None:
        passed_rel = True
    elif math.isnan(ratio):
        passed_rel = False
    else:
        passed_rel = ratio >= relative if higher else ratio <= relative
    passed_abs = diff >= absolute if higher else diff <= absolute
    passed = passed_abs and passed_rel
    return Check(
        t,
        "change",
        passed,
        value,
        base,
        f"{t.metric}: candidate {value:.6g} vs baseline {base:.6g} (diff "
        f"{diff:+.6g}, {t.direction}) {'passes' if passed else 'fails'}.",
    )


_SPEC = re.compile(
    r"^\s*(?P<metric>[\w./-]+)\s*(?P<op>>=|<=)\s*"
    r"(?P<num>[-+]?[\d.]+(?:e[-+]?\d+)?)\s*(?P<pct>%?)\s*$",
    re.IGNORECASE,
)


def parse_thresholds(
    value_specs: Sequence[str], change_specs: Sequence[str]
) -> tuple[MetricThreshold, ...]:
    """Parses the compact flag syntax (see the module docstring).

    Args:
      value_specs: e.g. ["top1>=0.7", "ece<=0.1"].
      change_specs: e.g. ["top1>=-1e-10", "loss<=5%"].

    Returns:
      The thresholds, value ones first.

    Raises:
      ValueError: a spec does not parse; the message quotes it.
    """
    out = []
    for spec in value_specs:
        metric, op, num, pct = _match(spec)
        if pct:
            raise ValueError(f"Value threshold {spec!r}: no % allowed.")
        bound = "lower_bound" if op == ">=" else "upper_bound"
        out.append(MetricThreshold(metric, **{bound: num}))
    for spec in change_specs:
        metric, op, num, pct = _match(spec)
        direction = HIGHER_IS_BETTER if op == ">=" else LOWER_IS_BETTER
        kind = "relative" if pct else "absolute"
        value = num / 100.0 if pct else num
        out.append(
            MetricThreshold(metric, direction=direction, **{kind: value})
        )
    return tuple(out)


def thresholds_from_json(
    data: Sequence[Mapping[str, Any]],
) -> tuple[MetricThreshold, ...]:
    """Thresholds from a config file's list of field dicts."""
    return tuple(
        t if isinstance(t, MetricThreshold) else MetricThreshold(**t)
        for t in data
    )


def _match(spec: str) -> tuple[str, str, float, str]:
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(
            f"Cannot parse threshold {spec!r}; expected e.g. 'top1>=0.7', "
            "'loss<=0.05' or 'top1>=-1%'."
        )
    return m["metric"], m["op"], float(m["num"]), m["pct"]
