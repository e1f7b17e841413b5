"""Goals a deployment must meet, absolute or relative to the baseline, and how a measurement meets them.

A number is absolute (milliseconds, megabytes, accuracy points, cosine); a string ending in ``%`` is relative to the
baseline: ``max_latency_ms="50%"`` is half the baseline's latency, ``max_accuracy_drop="0.5%"`` is 0.5% of the
baseline's quality (0.5 points of 99% accuracy is 0.495; for an embedder without labels, quality is the cosine to the
baseline's outputs, so ``"0.5%"`` asks for cosine >= 0.995), ``min_speedup`` is a ratio (2 = twice as fast).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from slimforge.core.config import check_unit
from slimforge.errors import ConfigError

Amount = float | str | None


def parse_amount(value: Amount, name: str) -> Amount:
    """A positive number, or ``'N%'``; ``'10ms'``, ``'200MB'``, ``'200 MiB'`` are read as numbers.

    Example:
        >>> parse_amount("0.5%", "x"), parse_amount("10ms", "x"), parse_amount(3, "x")
        ('0.5%', 10.0, 3.0)
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(%|ms|s|mb|mib|gb|gib|x)?", text)
    if not m:
        raise ConfigError(f"{name}: cannot read {value!r}; give a number (e.g. 10, 10ms, 200MB) or a percentage "
                          "of the baseline (e.g. 50%)")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        return f"{number:g}%"
    scale = {"s": 1000.0, "gb": 1000.0, "gib": 1024.0 * 1.048576, "mib": 1.048576}.get(unit or "", 1.0)
    return number * scale


def _resolve(amount: Amount, baseline: float | None) -> float | None:
    if amount is None:
        return None
    if isinstance(amount, str):
        if baseline is None:
            return None
        return baseline * float(amount[:-1]) / 100.0
    return float(amount)


@dataclass(frozen=True, kw_only=True)
class Goals:
    """What the optimized model must achieve.

    Example:
        >>> g = Goals.from_mapping({"inference_time": 10, "memory_usage": 200, "accuracy": 0.98})
        >>> g.max_latency_ms, g.max_memory_mb, g.min_accuracy
        (10.0, 200.0, 98.0)
    """

    max_latency_ms: Amount = None
    latency_stat: str = "p50"  # p50 | p95 | p99
    batch: int | None = None  # batch size of the latency goal (default: the target's first)
    max_memory_mb: Amount = None
    max_size_mb: Amount = None
    min_accuracy: float | None = None  # percent, on labelled data
    max_accuracy_drop: Amount = None  # points (or cosine units without labels), or N% of the baseline's quality
    min_cosine: float | None = None  # output cosine to the baseline
    min_speedup: float | None = None  # baseline latency / candidate latency at the goal batch

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_memory_mb", "max_size_mb", "max_accuracy_drop"):
            object.__setattr__(self, name, parse_amount(getattr(self, name), name))
        if self.latency_stat not in ("p50", "p95", "p99"):
            raise ConfigError(f"latency_stat must be p50, p95 or p99, got {self.latency_stat!r}")
        check_unit("min_cosine", self.min_cosine, allow_none=True)
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 100.0:
            raise ConfigError(f"min_accuracy is a percentage in [0, 100], got {self.min_accuracy}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")

    @staticmethod
    def from_mapping(data: dict[str, Any] | None) -> Goals:
        """From keyword goals, also in the seed's shape: ``inference_time`` (ms), ``memory_usage`` (MB),
        ``accuracy`` (a fraction <= 1 or a percentage)."""
        data = dict(data or {})
        aliases = {"inference_time": "max_latency_ms", "latency_ms": "max_latency_ms", "memory_usage": "max_memory_mb",
                   "memory_mb": "max_memory_mb", "size_mb": "max_size_mb", "accuracy": "min_accuracy",
                   "accuracy_drop": "max_accuracy_drop", "cosine": "min_cosine", "speedup": "min_speedup"}
        out: dict[str, Any] = {}
        for key, value in data.items():
            key = aliases.get(key, key)
            if key == "min_accuracy" and value is not None and float(value) <= 1.0:
                value = float(value) * 100.0
            out[key] = value
        known = {f.name for f in dataclasses.fields(Goals)}
        unknown = sorted(set(out) - known)
        if unknown:
            raise ConfigError(f"unknown goal(s) {unknown}; goals are {sorted(known)} (or inference_time, "
                              "memory_usage, accuracy)")
        return Goals(**out)

    def merged(self, defaults: dict[str, Any]) -> Goals:
        """These goals, with a target's defaults for the ones not set."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return Goals.from_mapping({**defaults, **given})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

@dataclass(frozen=True)
class GoalResult:
    """One goal against one measurement: ``margin`` is how far inside (>= 0) or outside (< 0) the goal it is."""

    name: str
    op: str  # "<=" or ">="
    target: float
    value: float | None
    unit: str

    @property
    def met(self) -> bool:
        return self.value is not None and (self.value <= self.target if self.op == "<=" else self.value >= self.target)

    @property
    def margin(self) -> float | None:
        if self.value is None:
            return None
        return self.target - self.value if self.op == "<=" else self.value - self.target

    def describe(self) -> str:
        if self.value is None:
            return f"{self.name}: not measured"
        fmt = (lambda v: f"{v:.4f}") if self.unit in ("", "cosine") else (lambda v: f"{v:.3g}")
        verdict = "met" if self.met else f"MISSED by {fmt(abs(self.margin or 0))} {self.unit}".rstrip()
        return f"{self.name} {self.op} {fmt(self.target)} {self.unit}: {fmt(self.value)} ({verdict})".replace("  ", " ")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "target": self.target, "value": self.value, "unit": self.unit,
                "met": self.met, "margin": self.margin, "text": self.describe()}


def assess(goals: Goals, m: dict[str, Any], base: dict[str, Any], batch: int) -> list[GoalResult]:
    """Check measurement ``m`` against ``goals``; ``base`` is the baseline's measurement (for relative goals).

    Measurements are dicts with ``latency`` ({batch: {p50, p95, p99}}), ``size_mb``, ``peak_memory_mb`` and
    ``quality`` (``accuracy`` in % when labelled, ``cosine`` to the baseline).
    """
    out: list[GoalResult] = []
    stat = goals.latency_stat

    def lat(x: dict[str, Any]) -> float | None:
        row = (x.get("latency") or {}).get(batch) or (x.get("latency") or {}).get(str(batch))
        return None if row is None else row[stat]

    if goals.max_latency_ms is not None:
        t = _resolve(goals.max_latency_ms, lat(base))
        if t is not None:
            out.append(GoalResult(f"latency {stat} at batch {batch}", "<=", t, lat(m), "ms"))
    if goals.min_speedup is not None:
        value = lat(base) / lat(m) if lat(base) and lat(m) else None
        out.append(GoalResult(f"speedup at batch {batch}", ">=", goals.min_speedup, value, "x"))
    if goals.max_memory_mb is not None:
        t = _resolve(goals.max_memory_mb, base.get("peak_memory_mb"))
        if t is not None:
            out.append(GoalResult("peak memory", "<=", t, m.get("peak_memory_mb"), "MB"))
    if goals.max_size_mb is not None:
        t = _resolve(goals.max_size_mb, base.get("size_mb"))
        if t is not None:
            out.append(GoalResult("size", "<=", t, m.get("size_mb"), "MB"))
    q, bq = m.get("quality") or {}, base.get("quality") or {}
    # without labels, the task's agreement with the baseline's outputs (top-1, boxes, mask IoU, SSIM, decisions)
    # stands in for accuracy; cosine where the task has none
    agree = _agreement_name(bq)
    if goals.min_accuracy is not None:
        if "accuracy" in bq or ("cosine" not in q and agree is None):
            out.append(GoalResult("accuracy", ">=", goals.min_accuracy, q.get("accuracy"), "%"))
        elif agree is not None:
            value = q.get("agreement")
            out.append(GoalResult(f"accuracy ({agree} with the baseline x 100, no labels)", ">=", goals.min_accuracy,
                                  None if value is None else value * 100.0, "%"))
        else:
            out.append(GoalResult("accuracy (cosine to baseline x 100, no labels)", ">=", goals.min_accuracy,
                                  q["cosine"] * 100.0, "%"))
    if goals.max_accuracy_drop is not None:
        if "accuracy" in bq:
            floor = bq["accuracy"] - (_resolve(goals.max_accuracy_drop, bq["accuracy"]) or 0.0)
            out.append(GoalResult("accuracy (max drop)", ">=", floor, q.get("accuracy"), "%"))
        elif agree is not None:
            floor = 1.0 - (_resolve(goals.max_accuracy_drop, 1.0) or 0.0)
            out.append(GoalResult(f"{agree} with baseline (max drop)", ">=", floor, q.get("agreement"), ""))
        else:
            floor = 1.0 - (_resolve(goals.max_accuracy_drop, 1.0) or 0.0)
            out.append(GoalResult("cosine to baseline (max drop)", ">=", floor, q.get("cosine"), "cosine"))
    if goals.min_cosine is not None:
        out.append(GoalResult("cosine to baseline", ">=", goals.min_cosine, q.get("cosine"), "cosine"))
    return out


def _agreement_name(quality: dict[str, Any]) -> str | None:
    """The name of the task's primary agreement metric in a quality dict (None when it has none but cosine)."""
    from slimforge.evaluation.tasks import PRIMARY

    if "agreement" not in quality:
        return None
    name = next((p for p in PRIMARY.values() if p in quality and p != "cosine"), None)
    return name.replace("_", " ") if name else None
