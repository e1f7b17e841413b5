"""The no-slowdown rule per batch size: the fastest verified variant at each batch, which may differ from the one
handed back (CUDA graphs win batch 1, plain bf16 wins batch 256)."""

from slimforge.auto.candidates import candidate
from slimforge.auto.evaluate import Evaluated
from slimforge.auto.select import per_batch_best
from slimforge.bench.compare import Ratio


def _ev(name: str, status: str, ms: dict[int, float], reason: str = "") -> Evaluated:
    base = {1: 4.0, 256: 50.0}
    return Evaluated(candidate=candidate(name, (), "torch"), status=status, reason=reason,
                     latency={b: {"p50": v} for b, v in ms.items()},
                     ratio={b: Ratio(base[b] / v, base[b] / v * 0.97, base[b] / v * 1.03) for b, v in ms.items()})


def test_per_batch_best_takes_the_fastest_measurably_faster_variant_at_each_batch():
    graphs = _ev("fp16 + graphs", "chosen", {1: 1.0, 256: 26.0})
    bf16 = _ev("bf16 eager", "rejected", {1: 4.4, 256: 23.0}, "slower than the baseline when timed side by side")
    tf32 = _ev("tf32", "accepted", {1: 3.9, 256: 40.0})
    bad = _ev("fp8", "rejected", {1: 0.5, 256: 10.0}, "cosine >= 0.995 : 0.9 (MISSED by 0.095)")  # quality missed
    best = per_batch_best([graphs, bf16, tf32, bad])
    assert best[1]["name"] == "fp16 + graphs" and best[256]["name"] == "bf16 eager"
    assert best[256]["p50_ms"] == 23.0 and best[256]["speedup"]["verdict"] == "faster"
    # a tie with the baseline is no winner at that batch
    assert per_batch_best([_ev("tie", "accepted", {1: 4.0})]) == {}
