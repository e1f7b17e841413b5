"""The one timing loop: sessions timed side by side on the same feeds, interleaved in rounds, until the medians and
the ratios between them are known to a stated precision or a time cap is reached.

Each round runs every session at every batch size (the order rotates between rounds, so that no variant always
runs first or last), a few runs each. A variant's latency is the median over all its runs; its interval and the
interval of each ratio are distribution-free intervals of the median over rounds (order statistics; ratios are
paired within a round, so drift of the machine between rounds cancels). A ratio is a verdict only when its interval
excludes 1.0 (by more than ``MARGIN``): "slower" needs the whole interval below, "faster" above; anything else is a
tie. When the intervals stay wide, or other processes took a large share of the CPUs while timing, the comparison
says that the machine was too noisy to decide.

Example:
    >>> import torch, slimforge
    >>> from slimforge.runtimes import open_session
    >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
    >>> s = open_session(art)
    >>> c = compare({"a": s}, {1: art.examples}, BenchSpec(repeats=6, min_time_s=0, rounds=3))
    >>> c.timing("a", 1).n >= 6
    True
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from slimforge.bench.timing import BenchSpec, Timing
from slimforge.runtimes import Session

TIE, FASTER, SLOWER = "tie", "faster", "slower"
MARGIN = 0.02  # differences under 2% are ties even when measured precisely: no one acts on them, and such biases
# (cache state, the order within a round) come and go between runs
BUSY = 0.25  # other processes using more than this share of the CPUs while timing: too noisy to decide


@dataclass(frozen=True, slots=True)
class Ratio:
    """``reference latency / variant latency`` (above 1: the variant is faster) with its interval."""

    value: float
    lo: float
    hi: float

    @property
    def verdict(self) -> str:
        """The no-slowdown rule, decided here only: slower or faster only when the whole interval lies below (above)
        1.0, by more than ``MARGIN``."""
        if self.hi < 1.0 - MARGIN:
            return SLOWER
        if self.lo > 1.0 + MARGIN:
            return FASTER
        return TIE

    @property
    def width(self) -> float:
        """Relative half-width of the interval."""
        return (self.hi - self.lo) / 2.0 / max(self.value, 1e-12)

    def describe(self) -> str:
        return f"{self.value:.2f}x [{self.lo:.2f}, {self.hi:.2f}]"

    def to_dict(self) -> dict[str, Any]:
        return {"speedup": round(self.value, 4), "lo": round(self.lo, 4), "hi": round(self.hi, 4),
                "verdict": self.verdict}

    @staticmethod
    def between(ref: Timing, var: Timing) -> Ratio:
        """A ratio of two independent measurements: the conservative interval from the two latency intervals."""
        return Ratio(ref.p50 / var.p50, ref.lo / max(var.hi, 1e-12), ref.hi / max(var.lo, 1e-12))


@dataclass
class Comparison:
    """Per (variant, batch): every run's seconds and each round's median; ratios against ``reference``."""

    names: list[str]
    batches: list[int]
    reference: str | None
    runs: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    rounds: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    noisy: bool = False
    confidence: float = 0.95
    others_cpu: float = 0.0  # share of the machine's CPU time other processes used while timing

    def timing(self, name: str, batch: int) -> Timing:
        lo, hi = _interval(np.asarray(self.rounds[(name, batch)]), None, self.confidence)
        t = Timing.from_samples(self.runs[(name, batch)])
        return t.with_interval(lo * 1000.0, hi * 1000.0, len(self.rounds[(name, batch)]))

    def ratio(self, name: str, batch: int, reference: str | None = None) -> Ratio:
        ref = reference or self.reference
        if ref is None:
            raise ValueError("no reference to compare with")
        a, b = np.asarray(self.rounds[(ref, batch)]), np.asarray(self.rounds[(name, batch)])
        value = float(np.median(self.runs[(ref, batch)]) / np.median(self.runs[(name, batch)]))
        lo, hi = _interval(a, b, self.confidence)
        return Ratio(value, min(lo, value), max(hi, value))

    def widest(self) -> float:
        """The widest relative interval: of the ratios when there is a reference, else of the medians."""
        widths = []
        for n in self.names:
            for b in self.batches:
                if self.reference is not None and n != self.reference:
                    widths.append(self.ratio(n, b).width)
                elif self.reference is None:
                    t = self.timing(n, b)
                    widths.append((t.hi - t.lo) / 2.0 / max(t.p50, 1e-12))
        return max(widths, default=0.0)

    def note(self) -> str:
        """One line on how the timing went, e.g. for a warning."""
        n = min(len(v) for v in self.rounds.values()) if self.rounds else 0
        how = (f"{n} interleaved rounds, intervals of +-{self.widest():.0%} "
               f"({coverage(n, self.confidence):.0%} coverage)")
        if self.others_cpu > BUSY:
            how += f"; other processes used {self.others_cpu:.0%} of the CPUs meanwhile"
        return ("the machine was too noisy to decide: " + how) if self.noisy else how


def coverage(n: int, confidence: float = 0.95) -> float:
    """The coverage of the median interval ``_median_interval`` gives with ``n`` rounds (the extremes cover
    ``1 - 2**(1-n)``: 75% at 3 rounds, 94% at 5, 97% at 6)."""
    from math import comb

    k = _order(n, confidence)
    return 1.0 - 2.0 * sum(comb(n, i) for i in range(k)) / 2.0 ** n


def _order(n: int, confidence: float) -> int:
    """The largest k >= 1 with P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence) / 2."""
    from math import comb

    k, tail = 0, 0.0
    while k < n // 2:
        nxt = tail + comb(n, k) / 2.0 ** n
        if nxt > (1.0 - confidence) / 2.0:
            break
        tail, k = nxt, k + 1
    return max(k, 1)


def _median_interval(x: np.ndarray, confidence: float) -> tuple[float, float]:
    """Distribution-free interval of the median of ``x``: the order statistics whose binomial coverage is at least
    ``confidence`` (with few rounds, the extremes, whose coverage is lower: see ``coverage``)."""
    v = np.sort(np.asarray(x, dtype=np.float64))
    n = len(v)
    if n < 2:  # one round says nothing about the spread
        return float("-inf"), float("inf")
    k = _order(n, confidence)
    return float(v[k - 1]), float(v[n - k])


def _interval(a: np.ndarray, b: np.ndarray | None, confidence: float) -> tuple[float, float]:
    """Interval of the median of ``a`` (per-round medians), or of the per-round ratio ``a / b`` (paired)."""
    return _median_interval(a / b if b is not None else a, confidence)


def _runs_per_round(sess: Session, feeds: Mapping[str, np.ndarray], spec: BenchSpec, share: int) -> int:
    """Warm up, then size a round so that each variant runs about ``min_time_s / rounds`` seconds in it, and all
    ``share`` (variant, batch) pairs together fit ``max_time_s`` in ``rounds`` rounds (at least one run each)."""
    call = compute_call(sess, feeds)
    for _ in range(max(spec.warmup, 1)):
        sess.sync()
        t0 = time.perf_counter()
        call()
        sess.sync()
    one = max(time.perf_counter() - t0, 1e-6)
    want = spec.min_time_s / max(spec.rounds, 1)
    cap = spec.max_time_s / (max(spec.rounds, 1) * max(share, 1) * one)
    return int(max(min(max(-(-spec.repeats // spec.rounds), round(want / one)), cap, 200), 1))


def compare(sessions: Mapping[str, Session], feeds: Mapping[Any, Any], spec: BenchSpec = BenchSpec(), *,
            reference: str | None = None, on_round: Callable[[int, int], None] | None = None) -> Comparison:
    """Time ``sessions`` interleaved; see the module docstring. ``feeds`` maps batch size -> feeds shared by every
    session, or session name -> {batch size -> feeds} (models with inputs of their own). ``reference`` names the
    session every ratio is taken against (the baseline)."""
    names = list(sessions)
    shared = all(isinstance(k, numbers.Integral) for k in feeds)
    per_session = {n: (feeds if shared else feeds[n]) for n in names}
    batches = list(next(iter(per_session.values())))
    comp = Comparison(names, batches, reference)
    if reference is not None and reference not in sessions:
        raise ValueError(f"reference {reference!r} is not among the sessions")
    if any(set(per_session[n]) != set(batches) for n in names):
        raise ValueError("every session needs feeds at the same batch sizes")
    share = len(names) * len(batches)
    per = {(n, b): _runs_per_round(sessions[n], per_session[n][b], spec, share) for b in batches for n in names}
    cpu0 = _cpu_times()
    start = time.perf_counter()
    r = 0
    while True:
        order = names[r % len(names):] + names[:r % len(names)]
        for b in batches:
            for n in order:
                comp.runs.setdefault((n, b), [])
                these = _time_runs(sessions[n], per_session[n][b], per[(n, b)])
                comp.runs[(n, b)].extend(these)
                comp.rounds.setdefault((n, b), []).append(float(np.median(these)))
        r += 1
        if on_round is not None:
            on_round(r, spec.max_rounds)
        elapsed = time.perf_counter() - start
        if r >= spec.rounds and (comp.widest() <= spec.rel_ci or r >= spec.max_rounds or elapsed > spec.max_time_s):
            break
    comp.seconds = time.perf_counter() - start
    comp.others_cpu = _others_share(cpu0, _cpu_times(), comp.seconds)
    comp.noisy = comp.widest() > max(spec.rel_ci * 3, 0.1) or comp.others_cpu > BUSY
    return comp


def _cpu_times() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process and its threads)."""
    import psutil

    t = psutil.cpu_times()
    busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system


def _others_share(t0: tuple[float, float], t1: tuple[float, float], wall: float) -> float:
    """The share of the machine's CPU capacity that other processes used between ``t0`` and ``t1``."""
    import psutil

    others = (t1[0] - t0[0]) - (t1[1] - t0[1])
    return max(others, 0.0) / max(wall * (psutil.cpu_count() or 1), 1e-9)


def compute_call(sess: Session, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
    """What compute latency times: on a session that can hold its inputs where it runs (``prepare``, e.g. a GPU),
    the run on device-resident inputs with outputs left there; else ``run`` on the feeds."""
    prepare = getattr(sess, "prepare", None)
    if prepare is None:
        return lambda: sess.run(feeds)
    held = prepare(feeds)
    return lambda: sess.run_tensors(held)  # type: ignore[attr-defined]


def _time_runs(sess: Session, feeds: Mapping[str, np.ndarray], n: int) -> list[float]:
    call = compute_call(sess, feeds)
    out = []
    for _ in range(n):
        sess.sync()
        t0 = time.perf_counter()
        call()
        sess.sync()
        out.append(time.perf_counter() - t0)
    return out
