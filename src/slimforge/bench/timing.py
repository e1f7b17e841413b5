"""Timing a session: warm-up, synchronise before reading the clock, many repeats, median/p95/p99."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from slimforge.errors import ConfigError
from slimforge.runtimes import Session


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchSpec:
    """How to time: ``warmup`` runs, then at least ``repeats`` runs and at least ``min_time_s`` seconds (capped by
    ``max_time_s``). Side-by-side comparisons (``bench.compare``) spread the runs over at least ``rounds`` interleaved
    rounds and add rounds, up to ``max_rounds`` or ``max_time_s``, until every interval is within ``rel_ci``
    (relative half-width)."""

    warmup: int = 3
    repeats: int = 20
    min_time_s: float = 0.5
    max_time_s: float = 20.0
    rounds: int = 6  # 6 rounds: the median intervals cover >= 95% (5: 94%, 3: 75%)
    max_rounds: int = 30
    rel_ci: float = 0.03

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1:
            raise ConfigError("warmup must be >= 0 and repeats >= 1")
        if self.rounds < 2 or self.max_rounds < self.rounds or self.rel_ci <= 0:
            raise ConfigError("rounds must be >= 2 (one round says nothing about the spread), max_rounds >= rounds "
                              "and rel_ci > 0")


@dataclass(frozen=True, slots=True)
class Timing:
    """Latency statistics in milliseconds over ``n`` timed runs; ``lo``/``hi`` bound the median (95%, order statistics
    over ``rounds`` interleaved rounds; equal to ``p50`` when it was timed in one go)."""

    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    n: int
    lo: float = 0.0
    hi: float = 0.0
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.lo == 0.0 and self.hi == 0.0:  # timed in one go: the interval is the median itself
            object.__setattr__(self, "lo", self.p50)
            object.__setattr__(self, "hi", self.p50)

    def with_interval(self, lo: float, hi: float, rounds: int) -> Timing:
        return Timing(self.p50, self.p95, self.p99, self.mean, self.min, self.n, min(lo, self.p50),
                      max(hi, self.p50), rounds)

    @staticmethod
    def from_samples(seconds: Sequence[float]) -> Timing:
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return Timing(float(p50), float(p95), float(p99), float(ms.mean()), float(ms.min()), int(ms.size))

    def to_dict(self) -> dict[str, float]:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99, "mean": self.mean, "min": self.min, "n": self.n,
                "ci": [round(self.lo, 6), round(self.hi, 6)], "rounds": self.rounds}


def time_session(sess: Session, feeds: Mapping[str, np.ndarray], spec: BenchSpec) -> Timing:
    """Time ``sess.run(feeds)``.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> from slimforge.runtimes import open_session
        >>> time_session(open_session(art), art.examples, BenchSpec(repeats=5, min_time_s=0)).n >= 5
        True
    """
    for _ in range(spec.warmup):
        sess.run(feeds)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < spec.repeats or (time.perf_counter() - start) < spec.min_time_s:
        sess.sync()
        t0 = time.perf_counter()
        sess.run(feeds)
        sess.sync()
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() - start > spec.max_time_s and len(samples) >= 3:
            break
    return Timing.from_samples(samples)
