"""Measured latency, cheaply: each distinct layer (``space.LayerSig``) is timed once on the target runtime, batch
size and threads, interleaved with an empty model that carries only the per-call overhead; a network's predicted
latency is that overhead plus its layers' times less the overhead each of them carried. Finalists are then timed
whole, and the predictor's error against them is reported."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from slimforge.bench.compare import compare
from slimforge.bench.timing import BenchSpec
from slimforge.nas.space import LayerSig, MbArch, layers

TABLE_SPEC = BenchSpec(warmup=2, repeats=10, min_time_s=0.02, max_time_s=8.0, rounds=3, max_rounds=5, rel_ci=0.1)
OVERHEAD = "(per-call overhead)"


class LatencyTable:
    """Milliseconds per layer signature at one batch size, runtime and thread count."""

    def __init__(self, *, classes: int, batch: int, threads: int | None, runtime: str = "torch",
                 spec: BenchSpec = TABLE_SPEC) -> None:
        self.classes, self.batch, self.threads, self.runtime, self.spec = classes, batch, threads, runtime, spec
        self.ms: dict[str, float] = {}
        self.overhead_ms: float | None = None
        self.measured = 0  # layers timed so far

    def _session(self, module: nn.Module, shape: tuple[int, ...]) -> tuple[Any, dict[str, np.ndarray]]:
        from slimforge.io.models import load
        from slimforge.runtimes import open_session

        x = torch.randn(*shape)
        art = load(module.eval(), example_inputs={"x": x})
        return open_session(art, self.runtime, threads=self.threads), {"x": x.numpy()}

    def measure(self, sigs: Iterable[LayerSig]) -> None:
        """Time the signatures not yet in the table, interleaved with the empty model."""
        new = {s.key(): s for s in sigs if s.key() not in self.ms}
        if not new:
            return
        sessions, feeds = {}, {}
        first = next(iter(new.values()))
        sessions[OVERHEAD], f = self._session(nn.Identity(), (self.batch, first.cin, *first.hw))
        feeds[OVERHEAD] = {self.batch: f}
        for key, sig in new.items():
            sessions[key], f = self._session(sig.build(self.classes), (self.batch, sig.cin, *sig.hw))
            feeds[key] = {self.batch: f}
        try:
            comp = compare(sessions, feeds, self.spec)
        finally:
            for s in sessions.values():
                s.close()
        over = comp.timing(OVERHEAD, self.batch).p50
        self.overhead_ms = over if self.overhead_ms is None else min(self.overhead_ms, over)
        for key in new:
            self.ms[key] = max(comp.timing(key, self.batch).p50 - over, 0.0)
        self.measured += len(new)

    def predict(self, arch: MbArch, in_ch: int, hw: tuple[int, int]) -> float:
        """Predicted latency (ms) of ``arch`` at the table's batch size; measures what the table lacks."""
        sigs = list(layers(arch, in_ch, hw))
        self.measure(sigs)
        return float(self.overhead_ms or 0.0) + sum(self.ms[s.key()] for s in sigs)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "threads": self.threads, "runtime": self.runtime,
                "overhead_ms": self.overhead_ms, "layers_ms": dict(self.ms)}


def predictor_error(predicted: dict[str, float], measured: dict[str, float]) -> dict[str, Any]:
    """The predictor's error on the finalists: per model ``(predicted - measured) / measured``, and the median of
    its absolute value.

    Example:
        >>> predictor_error({"a": 1.1, "b": 0.8}, {"a": 1.0, "b": 1.0})["median_abs_error"]
        0.15
    """
    rel = {k: (predicted[k] - measured[k]) / measured[k] for k in measured if measured[k] > 0 and k in predicted}
    return {"per_model": rel, "median_abs_error": round(float(np.median(np.abs(list(rel.values())))), 4)
            if rel else None}
