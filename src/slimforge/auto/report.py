"""The search's result as the one report document (``slimforge.report``, kind ``search``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimforge.auto.evaluate import Evaluated
from slimforge.auto.select import per_batch_best
from slimforge.report.build import document, variant


def _variant(e: Evaluated, path: Path | None) -> dict[str, Any]:
    art = e.artifact
    return variant(e.candidate.name, runtime=e.candidate.runtime, art=art, latency=e.latency, ratio=e.ratio,
                   quality=e.quality, precision=e.candidate.precision, steps=e.candidate.steps, status=e.status,
                   reason=e.reason, size_mb=e.size_mb, peak_memory_mb=e.peak_memory_mb, shapes=e.shapes,
                   goals=[g.to_dict() for g in e.goals], pareto=e.pareto, cached=e.cached, seconds=e.seconds,
                   runoff=e.runoff, **({"file": str(path)} if path is not None and e.status == "chosen" else {}),
                   **({"at_sizes": e.at_sizes} if e.at_sizes else {}),
                   **({"end_to_end_ms": e.end_to_end} if e.end_to_end else {}), **e.roofline)


def build(res: Any, *, recipe: dict[str, Any], artifact_path: Path | None, data_name: str | None,
          profiles: dict[str, Any] | None = None) -> dict[str, Any]:
    base = res.baseline_measurement
    baseline = variant(res.baseline.name, runtime=base["runtime"], art=res.baseline, latency=base["latency"],
                       quality=base.get("quality"), size_mb=base["size_mb"], peak_memory_mb=base.get("peak_memory_mb"),
                       shapes=base.get("shapes") or {}, status="baseline",
                       **({"at_sizes": base["at_sizes"]} if base.get("at_sizes") else {}),
                       **({"end_to_end_ms": base["end_to_end"]} if base.get("end_to_end") else {}),
                       flops_per_item=base.get("flops_per_item"), peak_gflops=base.get("peak_gflops"))
    candidates = [_variant(e, artifact_path) for e in res.evaluated]
    chosen = res.best.candidate.name if res.best else None
    per_batch = per_batch_best(res.evaluated)
    ranges = res.engine_profiles

    def runs(b: int) -> str | None:  # what the handed-back model runs at batch b (an engine may have batch ranges)
        return next((r["name"] for r in ranges if r["lo"] <= b <= r["hi"]), chosen)

    notes = list(res.notes) + [f"at batch {b} the fastest verified variant is {w['name']} ({w['p50_ms']:.3g} ms, "
                               f"{w['speedup']['speedup']:.2f}x the baseline); the handed-back model runs "
                               f"{runs(b) or 'the original'} there" for b, w in per_batch.items()
                               if w["name"] != runs(b)]
    timing = {"method": "each candidate timed alone (median with its 95% interval), then the leading candidates and "
                        "the baseline side by side in interleaved rounds", "note": res.timing_note,
              "noisy": res.noisy}
    return document(
        "search", baseline=baseline, candidates=candidates, chosen=chosen, per_batch_best=per_batch,
        threads=res.target.threads, timing=timing, notes=notes,
        **({"engine_profiles": ranges} if ranges else {}),
        model={"name": res.baseline.name, "task": res.baseline.meta.get("task"), "source_id": res.baseline.source_id},
        data={"name": data_name} if data_name else None, machine=res.machine, target=res.target.to_dict(),
        goals=res.goals.to_dict(), goal_batch=res.goal_batch, goals_met=res.goals_met,
        goal_results=[g.to_dict() for g in res.goal_results], recipe=recipe,
        verification=None if res.verification is None else res.verification.to_dict(),
        search={"seconds": res.seconds, "steps_built": res.steps_built, "steps_from_cache": res.steps_cached},
        **({"profiles": profiles} if profiles else {}))
