"""ONNX normalisation as a technique: the passes of ``slimforge.convert.normalize``, each kept only when it verifies
and does not slow the model down on the runtimes the model will run on, measured side by side (interleaved, the one
timing loop). A pass that is slower on any of them, in two comparisons in a row, is dropped, and the graph before it
goes on."""

from __future__ import annotations

import logging

from slimforge.bench import BenchSpec, compare
from slimforge.bench.compare import SLOWER
from slimforge.convert.normalize import NormalizeConfig, normalize_onnx
from slimforge.core.artifact import Artifact, Check, Format
from slimforge.core.context import RunContext
from slimforge.core.registry import implements

log = logging.getLogger(__name__)

GATE_SPEC = BenchSpec(warmup=2, repeats=5, min_time_s=0.1, max_time_s=6.0, rounds=6, max_rounds=12, rel_ci=0.03)


def speed_gate(runtimes: tuple[str, ...], threads: int | None):
    """A judge for ``normalize_onnx``: the pass's output against its input at batch 1 on each runtime."""

    def judge(before: Artifact, after: Artifact, name: str) -> Check | None:
        from slimforge.runtimes import available_runtimes, open_session

        usable = [r for r in runtimes if r in available_runtimes()]
        metrics: dict[str, float] = {}
        slower: list[str] = []
        for rt in usable:
            try:
                sessions = {"before": open_session(before, rt, threads=threads),
                            "after": open_session(after, rt, threads=threads)}
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot open either is not a slowdown
                log.info("speed gate: %s cannot open the pass's input or output: %s", rt, exc)
                continue
            try:
                ratio = compare(sessions, {1: dict(before.examples)}, GATE_SPEC).ratio("after", 1, "before")
                if ratio.verdict == SLOWER:  # a slowdown must replicate: one run's order or cache bias drops no pass
                    again = compare(sessions, {1: dict(before.examples)}, GATE_SPEC).ratio("after", 1, "before")
                    metrics[f"{rt}_speedup_first"] = ratio.value
                    ratio = again if again.verdict != SLOWER else max(ratio, again, key=lambda r: r.hi)
            finally:
                for s in sessions.values():
                    s.close()
            metrics[f"{rt}_speedup"] = ratio.value
            metrics[f"{rt}_speedup_lo"], metrics[f"{rt}_speedup_hi"] = ratio.lo, ratio.hi
            if ratio.verdict == SLOWER:
                slower.append(f"{rt} {ratio.describe()}")
        if not metrics:
            return None
        detail = (f"dropped: {name} makes the model slower on {', '.join(slower)}; the graph before it goes on"
                  if slower else f"{name} costs no speed on {', '.join(usable)}")
        return Check(f"speed_{name}", not slower, metrics, detail)

    return judge


@implements(NormalizeConfig, fmt=Format.ONNX)
def _normalize(art: Artifact, cfg: NormalizeConfig, ctx: RunContext) -> Artifact:
    judge = speed_gate(cfg.runtimes, ctx.threads) if cfg.speed_gate else None
    return normalize_onnx(art, cfg, ctx, judge=judge)
