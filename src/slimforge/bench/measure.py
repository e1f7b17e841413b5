"""Measuring artifacts: latency through the one timing loop (``bench.compare``), throughput, size, the input shapes
used, and peak memory measured the same way for every runtime (a fresh process, ``bench.memory``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from slimforge.bench.compare import Comparison, Ratio, compare
from slimforge.bench.timing import BenchSpec, Timing
from slimforge.core.artifact import Artifact
from slimforge.runtimes import open_session, tuned_threads

FeedsFn = Callable[[int], Mapping[str, np.ndarray]]


@dataclass
class BenchResult:
    """One artifact measured on one runtime; ``ratio`` holds its speedup over the reference it was timed beside."""

    name: str
    runtime: str
    device: str
    threads: int
    latency_ms: dict[int, Timing] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)  # items per second
    peak_memory_mb: float | None = None  # what loading and running the model adds to a process (largest batch)
    size_mb: float = 0.0
    memory_method: str = "not measured"
    file: str | None = None
    precision: str = "fp32"
    shapes: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    ratio: dict[int, Ratio] = field(default_factory=dict)
    timing_note: str = ""
    noisy: bool = False
    end_to_end_ms: dict[int, Timing] = field(default_factory=dict)  # GPU: host inputs in, host outputs out
    device_memory_mb: float | None = None  # GPU: weights plus the peak working memory of one run (largest batch)
    flops_per_item: float | None = None  # bench.flops: matrix products and convolutions, 2 per multiply-add
    peak_gflops: float | None = None  # the device's peak at this precision (bench.peaks)

    def achieved_gflops(self, batch: int) -> float | None:
        t = self.latency_ms.get(batch)
        return self.flops_per_item * batch / t.p50 / 1e6 if self.flops_per_item and t else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "file": self.file, "runtime": self.runtime, "precision": self.precision,
            "device": self.device, "threads": self.threads,
            "latency_ms": {str(b): t.to_dict() for b, t in self.latency_ms.items()},
            "throughput": {str(b): v for b, v in self.throughput.items()},
            "ratio": {str(b): r.to_dict() for b, r in self.ratio.items()},
            "shapes": {str(b): v for b, v in self.shapes.items()},
            "peak_memory_mb": self.peak_memory_mb, "memory_method": self.memory_method, "size_mb": self.size_mb,
            "timing": self.timing_note, "noisy": self.noisy,
            "end_to_end_ms": {str(b): t.to_dict() for b, t in self.end_to_end_ms.items()},
            "device_memory_mb": self.device_memory_mb, "flops_per_item": self.flops_per_item,
            "peak_gflops": self.peak_gflops,
            "achieved_gflops": {str(b): self.achieved_gflops(b) for b in self.latency_ms},
        }


def shapes_of(feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    return {k: [int(d) for d in np.shape(v)] for k, v in feeds.items()}


def measure_all(items: Sequence[tuple[Artifact, str | None]], feeds_for: FeedsFn | Sequence[FeedsFn], *,
                batch_sizes: Sequence[int] = (1, 32), spec: BenchSpec = BenchSpec(), threads: int | None = None,
                device: str = "cpu", precision: str | None = None, measure_memory: bool = True,
                on_round: Callable[[int, int], None] | None = None) -> tuple[list[BenchResult], Comparison]:
    """Time every ``(artifact, runtime)`` side by side (the first is the reference of the ratios) and measure each
    one's memory; ``feeds_for`` is one function for all, or one per item."""
    import torch

    from slimforge.runtimes import default_runtime

    fns = list(feeds_for) if isinstance(feeds_for, (list, tuple)) else [feeds_for] * len(items)
    keys = [f"{i}" for i in range(len(items))]
    feeds = {k: {b: fn(b) for b in batch_sizes} for k, fn in zip(keys, fns)}
    runtimes = [rt or default_runtime(art) for art, rt in items]
    sessions: dict[str, Any] = {}
    gpu = device == "cuda" or any(art.meta.get("device") == "cuda" for art, _ in items)
    weights: dict[str, float] = {}
    try:
        for k, (art, _), rt in zip(keys, items, runtimes):
            sessions[k] = open_session(art, rt, device=device, threads=threads, precision=precision)
            weights[k] = art.size_bytes() / 2**20 if gpu else 0.0  # parameters and buffers, where it runs
        comp = compare(sessions, feeds, spec, reference=keys[0] if len(keys) > 1 else None, on_round=on_round)
        extra = {k: _gpu_extras(sessions[k], feeds[k], batch_sizes, spec, weights[k]) for k in keys} if gpu else {}
    finally:
        for s in sessions.values():
            s.close()
    results = []
    for k, (art, _), rt in zip(keys, items, runtimes):
        used = threads or tuned_threads(art, rt, device) or torch.get_num_threads()
        r = BenchResult(art.name, rt, device, used, size_mb=art.size_bytes() / 1e6,
                        file=str(art.path) if art.path else None,
                        precision=str(precision or art.meta.get("precision") or "fp32"), timing_note=comp.note(),
                        noisy=comp.noisy)
        for b in batch_sizes:
            r.latency_ms[b] = comp.timing(k, b)
            r.throughput[b] = b / (r.latency_ms[b].p50 / 1000.0)
            r.shapes[b] = shapes_of(feeds[k][b])
            if comp.reference is not None and k != comp.reference:
                r.ratio[b] = comp.ratio(k, b)
        if k in extra:
            r.end_to_end_ms, r.device_memory_mb = extra[k]
            r.device = "cuda"
        r.flops_per_item, r.peak_gflops = _roofline(art, feeds[k][min(batch_sizes)], r.device, r.precision)
        if measure_memory and not gpu:
            from slimforge.bench.memory import peak_memory_mb

            r.peak_memory_mb, r.memory_method = peak_memory_mb(art, rt, feeds[k][max(batch_sizes)], threads=threads,
                                                               precision=precision)
        results.append(r)
    return results, comp


def _roofline(art: Artifact, feeds: Mapping[str, np.ndarray], device: str, precision: str
              ) -> tuple[float | None, float | None]:
    """FLOPs per item and the device's peak at the precision (int8 for every INT8 flavour)."""
    from slimforge.bench.flops import flops_per_item
    from slimforge.bench.peaks import device_peaks

    flops = flops_per_item(art, feeds)
    if flops is None:
        return None, None
    return flops, device_peaks(device, "int8" if precision.startswith("int8") else precision).get("peak_gflops")


def measure(art: Artifact, runtime: str | None, feeds_for: FeedsFn, *, batch_sizes: Sequence[int] = (1, 32),
            spec: BenchSpec = BenchSpec(), threads: int | None = None, device: str = "cpu",
            precision: str | None = None, on_batch: Callable[[int], None] | None = None,
            measure_memory: bool = True) -> BenchResult:
    """Open ``art`` and time it at each batch size (in interleaved rounds, with the median's interval); memory is
    measured in a fresh process at the largest batch."""
    results, _ = measure_all([(art, runtime)], feeds_for, batch_sizes=batch_sizes, spec=spec, threads=threads,
                             device=device, precision=precision, measure_memory=measure_memory)
    if on_batch is not None:
        for b in batch_sizes:
            on_batch(b)
    return results[0]


def _gpu_extras(sess: Any, feeds: dict[int, Mapping[str, np.ndarray]], batch_sizes: Sequence[int], spec: BenchSpec,
                weights_mb: float) -> tuple[dict[int, Timing], float]:
    """End-to-end latency (numpy in, numpy out: the copies a caller without device tensors pays), and the session's
    device memory: its weights plus the peak one run at the largest batch adds (``torch.cuda.max_memory_allocated``)."""
    import torch

    from slimforge.bench.timing import time_session

    e2e = {b: time_session(sess, feeds[b], BenchSpec(warmup=2, repeats=max(spec.repeats // 2, 5),
                                                      min_time_s=min(spec.min_time_s, 0.5), max_time_s=5.0))
           for b in batch_sizes}
    big = feeds[max(batch_sizes)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    sess.run(big)
    torch.cuda.synchronize()
    return e2e, round(weights_mb + (torch.cuda.max_memory_allocated() - start) / 2**20, 1)
