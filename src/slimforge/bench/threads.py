"""The intra-op thread count a model runs fastest with, measured on this machine (ONNX Runtime, OpenVINO).

Runtimes default to one thread per core. A small model is often faster on fewer: waking and joining a thread pool
costs more than the work it shares out (the digits CNN in INT8 on ONNX Runtime: 0.256 ms at batch 64 on one thread,
0.323 ms on two, on a 2-core machine). ``tune_threads`` times the candidate counts side by side with the one timing
loop and keeps a count other than the default only where it is measurably faster (the interval of its speedup over
the default lies above 1 by more than the tie margin); the choice goes into ``meta["threads"]``, which
``open_session`` (and so ``slimforge serve``) uses when no thread count is given.

PyTorch sessions share one process-wide pool (``torch.set_num_threads``), so counts cannot be timed side by side in
one process: they are not tuned here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from slimforge.bench.compare import FASTER, SLOWER, compare
from slimforge.bench.timing import BenchSpec
from slimforge.core.artifact import Artifact
from slimforge.runtimes import open_session, ort_spin_off, physical_cores

TUNABLE = ("onnxruntime", "openvino")
SPEC = BenchSpec(rounds=8, max_rounds=16, max_time_s=20.0)


@dataclass(frozen=True)
class ThreadChoice:
    """The measured choice: ``threads`` is None when the default (``default`` threads, one per core) stays."""

    runtime: str
    batches: list[int]
    default: int
    threads: int | None
    table: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    spin_waiting: bool = False  # ONNX Runtime sessions were timed with spin-waiting off (as slimforge serve runs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.threads is None:
            return f"the default ({self.default} threads) kept: {self.note}"
        return f"runs on {self.threads} of {self.default} threads, measured faster: " + ", ".join(
            f"batch {r['batch']} {r['p50_ms']:.3f} ms vs {self._default_ms(r['batch']):.3f} ms ({r['speedup']})"
            for r in self.table if r["threads"] == self.threads)

    def _default_ms(self, batch: int) -> float:
        return next(r["p50_ms"] for r in self.table if r["threads"] == self.default and r["batch"] == batch)


def default_threads() -> int:
    """The runtimes' default count (``runtimes.physical_cores``; the tests stand in another)."""
    return physical_cores()


def candidates(most: int) -> list[int]:
    """1, 2, 4, ... below ``most``, and ``most``.

    Example:
        >>> candidates(6), candidates(1)
        ([1, 2, 4, 6], [1])
    """
    out, n = [], 1
    while n < most:
        out.append(n)
        n *= 2
    return out + [most]


def tune_threads(model: Any, runtime: str | None = None, *, data: Any = None, batch_sizes: tuple[int, ...] = (1,),
                 max_threads: int | None = None, spec: BenchSpec = SPEC) -> Artifact:
    """``model`` (any model slimforge loads) with the thread count it runs fastest with on ``runtime`` (default: its
    natural one) at ``batch_sizes``, on ``data`` (default: synthesized from its inputs), recorded in its metadata; the
    evidence, one row per count, in ``meta["thread_tuning"]``. Save it (``slimforge.save``) to keep the choice.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> slimforge.tune_threads(art).meta["thread_tuning"]["threads"] is None  # torch: not tuned
        True
    """
    from slimforge.io.inputs import as_artifact, as_data, feeds_for
    from slimforge.runtimes import default_runtime

    art = as_artifact(model)
    runtime = runtime or default_runtime(art)
    fn = feeds_for(art, as_data(data, art, default_text=True) if data is not None else None)
    return with_threads(art, measure_threads(art, runtime, {b: fn(b) for b in batch_sizes},
                                             max_threads=max_threads, spec=spec))


def measure_threads(art: Artifact, runtime: str, feeds: Mapping[int, Mapping[str, np.ndarray]], *,
                    max_threads: int | None = None, spec: BenchSpec = SPEC) -> ThreadChoice:
    """Time ``art`` on ``runtime`` with each candidate thread count (up to ``max_threads``, default one per core) at
    each batch size of ``feeds`` (batch size -> feeds), interleaved. A count replaces the default only when it is
    measurably faster at one batch size and measurably slower at none; see the module docstring.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> measure_threads(art, "torch", {1: {"input": np.zeros((1, 4), np.float32)}}).threads is None
        True
    """
    batches = sorted(int(b) for b in feeds)
    most = max(1, min(max_threads or default_threads(), default_threads()))
    if runtime not in TUNABLE:
        return ThreadChoice(runtime, batches, most, None, note=f"{runtime} sessions share one thread pool per "
                            "process: thread counts are not tuned for it")
    if most == 1:
        return ThreadChoice(runtime, batches, most, None, note="one core: nothing to choose")
    counts = candidates(most)
    untuned = dataclasses.replace(art, meta={k: v for k, v in art.meta.items() if k != "threads"})
    # sessions taking turns must not spin-wait (each would slow the others; slimforge serve runs them so too); the
    # reference is the runtime's own default (threads not set: its pinning and pools), named by its count
    with ort_spin_off():
        sessions = {str(n): open_session(untuned, runtime, threads=None if n == most and most == default_threads()
                                         else n) for n in counts}
    try:
        comp = compare(sessions, {b: dict(feeds[b]) for b in batches}, spec, reference=str(most))
    finally:
        for sess in sessions.values():
            sess.close()
    table = []
    for n in counts:
        for b in batches:
            t = comp.timing(str(n), b)
            r = comp.ratio(str(n), b) if n != most else None
            table.append({"threads": n, "batch": b, "p50_ms": round(t.p50, 4), "lo_ms": round(t.lo, 4),
                          "hi_ms": round(t.hi, 4), "speedup": r.describe() if r else "1.00x (the default)",
                          "verdict": r.verdict if r else "default"})
    if comp.noisy:
        return ThreadChoice(runtime, batches, most, None, table, comp.note())  # ("too noisy to decide: ...")
    # measurably faster at one batch size; at the others not slower, not even within the noise (a tie at 0.95x
    # would hand the user a 5% slowdown there)
    verdicts = {n: [comp.ratio(str(n), b).verdict for b in batches] for n in counts if n != most}
    better = [n for n, v in verdicts.items() if FASTER in v and SLOWER not in v
              and min(comp.ratio(str(n), b).value for b in batches) >= 1.0]
    if not better:
        return ThreadChoice(runtime, batches, most, None, table, "no other count was measurably faster at one "
                            "batch size and not slower at the others")
    best = max(better, key=lambda n: (min(comp.ratio(str(n), b).value for b in batches), -n))
    return ThreadChoice(runtime, batches, most, best, table, comp.note())


def with_threads(art: Artifact, choice: ThreadChoice) -> Artifact:
    """``art`` with the choice recorded (``meta["threads"]`` when a count other than the default won; the evidence in
    ``meta["thread_tuning"]``)."""
    meta = {k: v for k, v in art.meta.items() if k != "threads"}
    meta["thread_tuning"] = choice.to_dict()
    if choice.threads is not None:
        meta["threads"] = choice.threads
    return dataclasses.replace(art, meta=meta)
