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


def _placed(e: Evaluated) -> Evaluated:
    import numpy as np

    from slimforge.core.artifact import Artifact, Format, IOSpec

    e.artifact = Artifact(format=Format.TORCH, io=IOSpec(()), handle=object(),
                          examples={"x": np.zeros((1, 2), np.float32)}, meta={"device": "cuda"})
    return e


def test_engine_profiles_give_a_batch_range_to_a_variant_measurably_faster_than_the_chosen_one_there():
    from slimforge.auto.select import batch_profiles

    base = {1: 4.0, 32: 10.0, 256: 50.0}

    def ev(name, status, ms, spread=0.03, reason=""):
        return _placed(Evaluated(candidate=candidate(name, (), "torch"), status=status, reason=reason,
                                 latency={b: {"p50": v} for b, v in ms.items()},
                                 ratio={b: Ratio(base[b] / v, base[b] / v * (1 - spread), base[b] / v * (1 + spread))
                                        for b, v in ms.items()}))

    graphs = ev("fp16 + graphs", "chosen", {1: 1.0, 32: 3.7, 256: 26.0})
    bf16 = ev("bf16 + compile", "accepted", {1: 3.5, 32: 3.9, 256: 23.0})
    ranges = batch_profiles(graphs, [graphs, bf16], 256)
    # 256: 50/23 = 2.17x [2.11, 2.24] against 50/26 = 1.92x [1.87, 1.98]: apart; 32: not faster there
    assert [(lo, hi, e.candidate.name) for lo, hi, e in ranges] == [(1, 90, "fp16 + graphs"),
                                                                    (91, 256, "bf16 + compile")]
    # within the noise (wide intervals), the chosen one runs every batch size
    wide = ev("bf16 + compile", "accepted", {1: 3.5, 32: 3.9, 256: 23.0}, spread=0.2)
    assert batch_profiles(graphs, [graphs, wide], 256) == []
    # faster at batch 1 only: the small range goes to it; 1 and 32 split at their geometric middle (5)
    tiny = ev("tiny graphs", "accepted", {1: 0.5, 32: 3.8, 256: 27.0})
    ranges = batch_profiles(graphs, [graphs, tiny], 256)
    assert [(lo, hi, e.candidate.name) for lo, hi, e in ranges] == [(1, 5, "tiny graphs"), (6, 256, "fp16 + graphs")]
    # a faster variant that is not placed on the GPU (or missed the quality goals) gets no range
    cpu = ev("bf16 + compile", "accepted", {1: 3.5, 32: 3.9, 256: 23.0})
    cpu.artifact = None
    bad = ev("fp8", "rejected", {1: 0.5, 32: 1.0, 256: 10.0}, reason="cosine >= 0.995 : 0.9 (MISSED by 0.095)")
    assert batch_profiles(graphs, [graphs, cpu, bad], 256) == []
    # measured sizes beyond the engine's bound (256) do not make ranges past it
    base[512] = 100.0
    big = ev("fp16 + graphs", "chosen", {1: 1.0, 32: 3.7, 256: 26.0, 512: 52.0})
    big_bf16 = ev("bf16 + compile", "accepted", {1: 3.5, 32: 3.9, 256: 23.0, 512: 40.0})
    ranges = batch_profiles(big, [big, big_bf16], 256)
    assert [(lo, hi) for lo, hi, _ in ranges] == [(1, 90), (91, 256)]
    only_512 = ev("bf16 + compile", "accepted", {1: 3.5, 32: 3.9, 256: 26.5, 512: 40.0})
    assert batch_profiles(big, [big, only_512], 256) == []


def test_an_engine_whose_batch_range_cannot_compile_is_written_with_the_chosen_variant_for_all(monkeypatch, tmp_path):
    """A range's variant that AOTInductor cannot compile (say, an FP8 tensor subclass) must not cost the user the
    engine: it is written with the chosen variant for every batch size, and the result says so."""
    from types import SimpleNamespace

    import slimforge.io.save as save_mod
    from slimforge.auto import _save_engine
    from slimforge.errors import TechniqueFailed

    calls = []

    def fake_save(art, path, *, profiles=()):
        calls.append(len(profiles))
        if profiles:
            raise TechniqueFailed("fp8 + compile cannot be compiled into an engine")
        return "written"

    monkeypatch.setattr(save_mod, "save", fake_save)
    res = SimpleNamespace(notes=[], engine_profiles=[{"lo": 91, "hi": 256, "name": "fp8"}])
    assert _save_engine(res, object(), tmp_path / "e.pt2", [object()]) == "written"
    assert calls == [1, 0] and res.engine_profiles == []
    assert "batch ranges could not be built (fp8 + compile cannot be compiled" in res.notes[0]
