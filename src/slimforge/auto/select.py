"""Selection: the runoff, the no-slowdown rule, the Pareto front, the choice and the ablation of optional steps.

The no-slowdown rule lives in one function, ``slowdowns``: a candidate is slower than the baseline at a batch size
only when the interval of its speedup lies wholly below 1.0 (``bench.compare.Ratio.verdict``). Inside the noise it is
a tie, and ties are decided by size, then by simplicity (fewer steps)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from slimforge.auto.evaluate import Evaluated, Evaluator
from slimforge.bench import BenchSpec, measure_all
from slimforge.bench.compare import FASTER, SLOWER
from slimforge.errors import SlimforgeError

log = logging.getLogger(__name__)

BUILD_ERRORS = (SlimforgeError, RuntimeError, ValueError, OSError, ImportError)
ABLATION_SPEC = BenchSpec(warmup=1, repeats=6, min_time_s=0.3, max_time_s=6.0, rounds=3, max_rounds=5, rel_ci=0.04)


def runoff_spec(time_budget_s: float) -> BenchSpec:
    """The runoff's timing: at least 6 interleaved rounds (95% intervals), more while the intervals are wide, for
    about 4% of the search's time budget (6 to 60 s)."""
    return BenchSpec(warmup=2, repeats=10, min_time_s=0.45, max_time_s=min(max(0.04 * time_budget_s, 6.0), 60.0),
                     rounds=6, max_rounds=15, rel_ci=0.04)


def slowdowns(ev: Evaluated) -> str:
    """The batch sizes at which ``ev`` is slower than the baseline, with the figures ("" when none): THE rule."""
    at_batch = [f"{b} ({ev.latency[b]['p50']:.3g} ms, {r.describe()} the baseline's speed)"
                for b, r in sorted(ev.ratio.items()) if r.verdict == SLOWER]
    at_size = [f"{b} at {label} ({ev.at_sizes[label]['p50']:.3g} ms, {r.describe()} the baseline's speed)"
               for label, r in sorted(ev.size_ratio.items()) if r.verdict == SLOWER
               for b in [ev.at_sizes[label]["batch"]]]
    return ", ".join(at_batch + at_size)


def speedup(ev: Evaluated) -> float:
    """Geometric mean over the measured batch sizes of the speedup over the baseline."""
    vals = [r.value for r in ev.ratio.values()]
    return float(np.exp(np.mean(np.log(vals)))) if vals else 0.0


def failure(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def runoff(accepted: list[Evaluated], ev: Evaluator, base_runtime: str, *, spec: BenchSpec,
           finalists: int = 5) -> tuple[str, bool]:
    """Time the leading candidates and the baseline side by side (the one timing loop) so that neither the choice
    between close candidates nor the no-slowdown rule is decided by noise; the finalists' goals are assessed again
    on these timings. Returns the timing's note and whether it was too noisy to decide."""
    lead = sorted(accepted, key=lambda e: -speedup(e))[:finalists]
    if not lead:
        return "", False
    items = [(ev.model, base_runtime), *[(e.artifact, e.candidate.runtime) for e in lead]]
    ev.ctx.report_progress("runoff of the leading candidates", 0, spec.max_rounds)
    try:
        results, comp = measure_all(items, ev.feeds, batch_sizes=ev.batch_sizes, spec=spec, threads=ev.threads,
                                    device=ev.device, measure_memory=False,
                                    on_round=lambda r, n: ev.ctx.report_progress("runoff of the leading candidates",
                                                                                 r, n))
    except (SlimforgeError, RuntimeError, ValueError) as exc:
        log.warning("runoff skipped: %s", exc)
        return "", False
    ev.base_doc["latency"] = {b: t.to_dict() for b, t in results[0].latency_ms.items()}
    for e, r in zip(lead, results[1:]):
        e.latency = {b: t.to_dict() for b, t in r.latency_ms.items()}
        e.ratio = dict(r.ratio)
        e.runoff = True
        ev.judge(e)  # latency and speedup goals on the side-by-side timings
    _at_sizes(lead, items, ev, spec)
    return comp.note(), comp.noisy


def _at_sizes(lead: list[Evaluated], items: list[tuple[Any, str]], ev: Evaluator, spec: BenchSpec) -> None:
    """The finalists and the baseline side by side at each further size the user gave (``--input-shape`` more
    than once): a candidate slower there is slower (an INT8 model fast at 224x224 may lose at 512x512)."""
    from slimforge.io.shapes import extra_size_feeds

    for label, feeds in extra_size_feeds(ev.model):
        batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
        ev.ctx.report_progress(f"runoff at {label}", 0, spec.max_rounds)
        try:
            results, _ = measure_all(items, lambda b, f=feeds: f, batch_sizes=(batch,), spec=spec, threads=ev.threads,
                                     device=ev.device, measure_memory=False,
                                     on_round=lambda r, n, lb=label: ev.ctx.report_progress(f"runoff at {lb}", r, n))
        except (SlimforgeError, RuntimeError, ValueError) as exc:
            log.warning("timing at %s skipped: %s", label, exc)
            continue
        ev.base_doc.setdefault("at_sizes", {})[label] = {"batch": batch, **results[0].latency_ms[batch].to_dict()}
        for e, r in zip(lead, results[1:]):
            e.at_sizes[label] = {"batch": batch, **r.latency_ms[batch].to_dict(), "ratio": r.ratio[batch].to_dict()}
            e.size_ratio[label] = r.ratio[batch]


def apply_no_slowdown(evaluated: list[Evaluated]) -> None:
    """Reject every accepted candidate that ``slowdowns`` finds slower than the baseline somewhere."""
    for ev in evaluated:
        slower = slowdowns(ev) if ev.status == "accepted" else ""
        if slower:
            how = "when timed side by side" if ev.runoff else "(timed alone)"
            ev.status, ev.reason = "rejected", f"slower than the baseline {how} at batch {slower}"


def require_gain(evaluated: list[Evaluated], base_size_mb: float | None) -> None:
    """Keep only what measurably helps: an accepted candidate must be faster than the baseline (its interval above
    1.0) at some batch size, or at least 5% smaller; a tie on both is no gain and is not handed back."""
    for ev in evaluated:
        if ev.status != "accepted":
            continue
        faster = any(r.verdict == FASTER for r in ev.ratio.values())
        smaller = base_size_mb is not None and ev.size_mb is not None and ev.size_mb < 0.95 * base_size_mb
        if not (faster or smaller):
            ev.status = "rejected"
            ev.reason = ("no measurable gain: as fast as the baseline within the noise ("
                         + ", ".join(f"batch {b}: {r.describe()}" for b, r in sorted(ev.ratio.items()))
                         + ") and not smaller")


def _fastest_per_batch(evaluated: list[Evaluated]) -> dict[int, Evaluated]:
    quality_ok = [e for e in evaluated if e.status in ("accepted", "chosen") or (
        e.status == "rejected" and e.reason.startswith(("slower than the baseline", "no measurable gain")))]
    out: dict[int, Evaluated] = {}
    for b in sorted({b for e in quality_ok for b in e.ratio}):
        faster = [e for e in quality_ok if b in e.ratio and e.ratio[b].verdict == FASTER]
        if faster:
            out[b] = min(faster, key=lambda c: c.latency[b]["p50"])
    return out


def per_batch_best(evaluated: list[Evaluated]) -> dict[int, dict[str, Any]]:
    """At each batch size, the fastest candidate that met the quality goals and is measurably faster than the
    baseline there (the no-slowdown rule per batch: one slower at batch 1 may still be the one for batch 256)."""
    return {b: {"name": e.candidate.name, "p50_ms": e.latency[b]["p50"], "speedup": e.ratio[b].to_dict()}
            for b, e in _fastest_per_batch(evaluated).items()}


def batch_profiles(best: Evaluated, evaluated: list[Evaluated], max_batch: int) -> list[tuple[int, int, Evaluated]]:
    """The batch ranges of a GPU engine and the candidate each runs: the chosen one, except around a measured batch
    size where another verified GPU candidate is measurably faster than it (the speedup intervals apart: the chosen's
    upper end below the other's lower end). Ranges split at the geometric middle of neighbouring measured sizes.
    Empty when the chosen one runs every batch size."""
    import math

    wins = _fastest_per_batch(evaluated)
    owners: list[tuple[int, Evaluated]] = []
    for b in sorted(k for k in best.ratio if k <= max_batch):  # sizes beyond the engine's bound do not count
        w = wins.get(b)
        beaten = (w is not None and w is not best and w.artifact is not None and b in w.ratio
                  and w.artifact.meta.get("device") == "cuda" and best.ratio[b].hi < w.ratio[b].lo)
        owners.append((b, w if beaten else best))  # type: ignore[arg-type]
    if not owners or all(e is best for _, e in owners):
        return []
    ranges: list[tuple[int, int, Evaluated]] = []
    lo = 1
    for i, (b, e) in enumerate(owners):
        hi = max_batch if i == len(owners) - 1 else min(max(b, math.isqrt(b * owners[i + 1][0])), max_batch)
        if ranges and ranges[-1][2] is e:
            ranges[-1] = (ranges[-1][0], hi, e)
        else:
            ranges.append((lo, hi, e))
        lo = hi + 1
    return ranges


def mark_pareto(evaluated: list[Evaluated], batch: int, labelled: bool) -> None:
    """Pareto front over (latency, quality, size) among the candidates that were measured."""
    pts = [e for e in evaluated if batch in e.latency]

    def q(e: Evaluated) -> float:
        return e.quality.get("accuracy" if labelled else "cosine", 0.0)

    for e in pts:
        lat, qe, s = e.latency[batch]["p50"], q(e), e.size_mb or 0.0
        e.pareto = not any(
            (o.latency[batch]["p50"] <= lat and q(o) >= qe and (o.size_mb or 0.0) <= s)
            and (o.latency[batch]["p50"] < lat or q(o) > qe or (o.size_mb or 0.0) < s) for o in pts if o is not e)


def _tied(a: Evaluated, b: Evaluated) -> bool:
    """``b`` is as fast as ``a`` within the noise: at every batch size, b's speedup reaches a's interval."""
    return bool(a.ratio) and all(b.ratio.get(k) is not None and b.ratio[k].value >= r.lo and r.value <= b.ratio[k].hi
                                 for k, r in a.ratio.items())


def choose(evaluated: list[Evaluated]) -> Evaluated | None:
    """Among candidates that meet the quality goals and never slow down: all goals met first, then the fewest and
    smallest misses (relative), then the highest speedup; candidates tied with it within the noise are decided by
    size, then by fewer steps, then bf16 before fp16 (fp32's exponent range: activations cannot overflow; on the
    H200, ViT-B/16 at batch 256 ran 4-7% faster in bf16 than in fp16 eager in each of three runs)."""
    ok = [e for e in evaluated if e.status == "accepted"]
    if any(e.runoff for e in ok):  # the finalists were timed side by side: the choice is among them
        ok = [e for e in ok if e.runoff]
    if not ok:
        return None

    def misses(e: Evaluated) -> tuple:
        missed = [g for g in e.goals if not g.met]
        return len(missed), round(sum(abs(g.margin or 0) / max(abs(g.target), 1e-9) for g in missed), 6)

    best_misses = min(misses(e) for e in ok)
    pool = sorted((e for e in ok if misses(e) == best_misses), key=lambda e: -speedup(e))
    fastest = pool[0]
    tied = [e for e in pool if e is fastest or _tied(fastest, e)]
    return min(tied, key=lambda e: (round(e.size_mb or 0.0, 1), len(e.candidate.steps),
                                    e.candidate.precision == "fp16", -speedup(e)))


def ablate(best: Evaluated, evaluated: list[Evaluated], ev: Evaluator,
           run: Callable[[Evaluated], Any]) -> Evaluated:
    """Keep an optional step of the winner only if the winner is measurably faster with it: the variant without it
    is timed side by side with the winner, and a tie goes to the simpler variant. The variant must itself meet
    the quality goals and never be slower than the baseline."""
    for idx in sorted(best.candidate.optional, reverse=True):
        if idx >= len(best.candidate.steps):
            continue
        step = best.candidate.steps[idx].kind
        other = Evaluated(best.candidate.without(idx))
        evaluated.append(other)
        try:
            missed = run(other)
        except BUILD_ERRORS as exc:
            other.status, other.reason = "failed", failure(exc)
            continue
        if missed:
            other.status, other.reason = "rejected", "ablation: " + "; ".join(g.describe() for g in missed)
            continue
        if slowdowns(other):
            other.status = "rejected"
            other.reason = f"ablation: without '{step}' it is slower than the baseline at batch {slowdowns(other)}"
            continue
        verdict = _side_by_side(best, other, ev)
        if verdict != SLOWER:
            other.status = "accepted"
            best.status, best.reason = "rejected", f"its step '{step}' did not measurably help ({verdict} without it)"
            best = other
        else:
            other.status, other.reason = "rejected", f"ablation: without '{step}' it is slower than with it"
    return best


def _side_by_side(best: Evaluated, other: Evaluated, ev: Evaluator) -> str:
    """The verdict on ``other`` against ``best``, timed together: slower, faster or tie (the worst batch size)."""
    try:
        results, _ = measure_all([(best.artifact, best.candidate.runtime), (other.artifact, other.candidate.runtime)],
                                 ev.feeds, batch_sizes=ev.batch_sizes, spec=ABLATION_SPEC, threads=ev.threads,
                                 device=ev.device, measure_memory=False)
    except (SlimforgeError, RuntimeError, ValueError) as exc:
        log.warning("ablation timing failed: %s", exc)
        return SLOWER
    verdicts = [r.verdict for r in results[1].ratio.values()]
    return SLOWER if SLOWER in verdicts else ("faster" if all(v == "faster" for v in verdicts) else "tie")


def lost_to(ev: Evaluated, best: Evaluated) -> str:
    parts = ", ".join(f"batch {b}: {v['p50']:.3g} vs {best.latency[b]['p50']:.3g} ms" for b, v in ev.latency.items()
                      if b in best.latency)
    if speedup(ev) >= speedup(best):  # it lost a tie (within the noise) on size or simplicity
        return f"meets the quality goals; as fast as the chosen '{best.candidate.name}' within the noise, which " \
               f"is smaller or simpler ({parts})"
    return f"meets the quality goals; the chosen '{best.candidate.name}' is faster overall ({parts})"
