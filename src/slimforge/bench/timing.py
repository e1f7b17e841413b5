"""Timing a session: warm-up, synchronise before reading the clock, many repeats, median/p95/p99."""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from slimforge.core.artifact import Artifact
from slimforge.errors import ConfigError
from slimforge.runtimes import Session, open_session

FeedsFn = Callable[[int], Mapping[str, np.ndarray]]


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchSpec:
    """How to time: ``warmup`` runs, then at least ``repeats`` runs and at least ``min_time_s`` seconds (capped by
    ``max_time_s``)."""

    warmup: int = 3
    repeats: int = 20
    min_time_s: float = 0.5
    max_time_s: float = 20.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1:
            raise ConfigError("warmup must be >= 0 and repeats >= 1")


@dataclass(frozen=True, slots=True)
class Timing:
    """Latency statistics in milliseconds over ``n`` timed runs."""

    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    n: int

    @staticmethod
    def from_samples(seconds: Sequence[float]) -> Timing:
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return Timing(float(p50), float(p95), float(p99), float(ms.mean()), float(ms.min()), int(ms.size))

    def to_dict(self) -> dict[str, float]:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99, "mean": self.mean, "min": self.min, "n": self.n}


def time_session(sess: Session, feeds: Mapping[str, np.ndarray], spec: BenchSpec) -> Timing:
    """Time ``sess.run(feeds)``.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
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


@dataclass
class BenchResult:
    """One artifact measured on one runtime."""

    name: str
    runtime: str
    device: str
    threads: int
    latency_ms: dict[int, Timing] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)  # items per second
    peak_memory_mb: float = 0.0  # what loading and running the model adds to a process, at the largest batch
    size_mb: float = 0.0
    memory_method: str = "not measured"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "runtime": self.runtime, "device": self.device, "threads": self.threads,
            "latency_ms": {str(b): t.to_dict() for b, t in self.latency_ms.items()},
            "throughput": {str(b): v for b, v in self.throughput.items()},
            "peak_memory_mb": self.peak_memory_mb, "memory_method": self.memory_method, "size_mb": self.size_mb,
        }


class _PeakRss:
    """Samples this process's resident memory in a background thread; ``peak_mb`` is the rise over the start."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.start_rss = 0
        self.peak_rss = 0

    def __enter__(self) -> _PeakRss:
        gc.collect()
        self.start_rss = self.peak_rss = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak_rss - self.start_rss) / 1e6


def measure(art: Artifact, runtime: str | None, feeds_for: FeedsFn, *, batch_sizes: Sequence[int] = (1, 32),
            spec: BenchSpec = BenchSpec(), threads: int | None = None, device: str = "cpu",
            precision: str | None = None, on_batch: Callable[[int], None] | None = None,
            measure_memory: bool = True) -> BenchResult:
    """Open ``art`` and time it at each batch size; memory is measured in a fresh process at the largest batch."""
    import torch

    from slimforge.runtimes import default_runtime

    rt = runtime or default_runtime(art)
    result = BenchResult(art.name, rt, device, threads or torch.get_num_threads(), size_mb=art.size_bytes() / 1e6)
    feeds_by_batch = {b: feeds_for(b) for b in batch_sizes}
    sess = open_session(art, rt, device=device, threads=threads, precision=precision)
    try:
        for b in batch_sizes:
            timing = time_session(sess, feeds_by_batch[b], spec)
            result.latency_ms[b] = timing
            result.throughput[b] = b / (timing.p50 / 1000.0)
            if on_batch is not None:
                on_batch(b)
    finally:
        sess.close()
    if measure_memory and device == "cpu":
        from slimforge.bench.memory import peak_memory_mb

        result.peak_memory_mb, result.memory_method = peak_memory_mb(
            art, rt, feeds_by_batch[max(batch_sizes)], threads=threads, precision=precision)
    return result
