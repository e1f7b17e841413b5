"""The one report document, versioned, written by the fixed recipe, ``quantize``, ``benchmark`` and the search.

Shape (``schema`` ``slimforge.report``, ``schema_version`` 2)::

    kind            recipe | quantize | benchmark | search
    created, environment, model, data
    baseline        a variant (below)
    candidates      the other variants, each with its status (chosen | accepted | rejected | failed | skipped |
                    measured) and, unless chosen, the reason it lost
    chosen          {name, runtime, path, speedup_p50} of the variant handed back, or null
    result          the chosen variant in full, or null
    comparison      {speedup_p50, ratio, size_ratio} of the chosen variant over the baseline
    timing          how latency was measured, and whether the machine was too noisy to decide
    warnings        what the terminal warns about (a slowdown first), in the same words
    notes, target, goals, goal_batch, goals_met, goal_results, verification, recipe, lineage, checks, search

A variant: name, label, file, method, runtime, format, precision, device, threads, steps, status, reason, latency_ms
(per batch: p50/p95/p99/mean/min/n and the median's interval ``ci``), ratio (per batch: speedup over the baseline with
its interval and verdict), shapes (per batch: the input shapes timed), throughput, size_mb, peak_memory_mb,
memory_method, quality, goals, pareto, checks.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping, Sequence

from slimforge.bench.compare import SLOWER, Ratio
from slimforge.bench.measure import BenchResult
from slimforge.core.artifact import Artifact
from slimforge.env import environment
from slimforge.evaluation.metrics import Metric

SCHEMA = "slimforge.report"
SCHEMA_VERSION = 2
KINDS = ("recipe", "quantize", "benchmark", "search")


def variant(name: str, *, runtime: str, label: str | None = None, art: Artifact | None = None,
            bench: BenchResult | None = None, latency: Mapping[int, Mapping[str, Any]] | None = None,
            ratio: Mapping[int, Ratio] | None = None, quality: Mapping[str, Any] | None = None,
            precision: str | None = None, steps: Sequence[Any] = (), status: str = "measured", reason: str = "",
            size_mb: float | None = None, peak_memory_mb: float | None = None, **extra: Any) -> dict[str, Any]:
    """One variant of the report. Figures come from ``bench`` when given, else from ``latency``/``ratio``."""
    lat = {str(b): t.to_dict() for b, t in bench.latency_ms.items()} if bench is not None else \
        {str(b): dict(v) for b, v in (latency or {}).items()}
    rat = dict(bench.ratio) if bench is not None else dict(ratio or {})
    path = (bench.file if bench is not None else None) or (str(art.path) if art is not None and art.path else None)
    prec = precision or (bench.precision if bench is not None else None) or \
        (str(art.meta.get("precision") or "fp32") if art is not None else "fp32")
    return {
        "name": name, "label": label or name, "file": path,
        "method": f"{_RUNTIME_NAMES.get(runtime, runtime)} {prec.upper()}",
        "runtime": runtime, "format": art.format.value if art is not None else None, "precision": prec,
        "device": bench.device if bench is not None else "cpu", "threads": bench.threads if bench else None,
        "steps": [s if isinstance(s, dict) else s.to_dict() for s in steps], "status": status, "reason": reason,
        "latency_ms": lat, "ratio": {str(b): r.to_dict() for b, r in rat.items()},
        "shapes": {str(b): v for b, v in (bench.shapes if bench is not None else extra.pop("shapes", {})).items()},
        "throughput": {b: round(int(b) / (v["p50"] / 1000.0), 3) for b, v in lat.items() if v.get("p50")},
        "size_mb": _size(size_mb, bench, art),
        "peak_memory_mb": peak_memory_mb if peak_memory_mb is not None else
        (bench.peak_memory_mb if bench is not None else None),
        "memory_method": bench.memory_method if bench is not None else extra.pop("memory_method", "not measured"),
        "quality": {k: _finite(m.value if isinstance(m, Metric) else m) for k, m in (quality or {}).items()},
        "flops_per_item": bench.flops_per_item if bench is not None else extra.pop("flops_per_item", None),
        "peak_gflops": bench.peak_gflops if bench is not None else extra.pop("peak_gflops", None),
        **extra,
    }


def _size(size_mb: float | None, bench: BenchResult | None, art: Artifact | None) -> float | None:
    if size_mb is None and bench is not None:
        size_mb = bench.size_mb
    if size_mb is None and art is not None:
        size_mb = art.size_bytes() / 1e6
    return None if size_mb is None else round(size_mb, 3)


_RUNTIME_NAMES = {"torch": "PyTorch", "torch_compile": "torch.compile", "onnxruntime": "ONNX Runtime",
                  "openvino": "OpenVINO"}


def variant_entry(label: str, art: Artifact, bench: BenchResult, quality: Mapping[str, Metric]) -> dict[str, Any]:
    """One measured variant of a recipe run: latency per batch size, throughput, memory, size, quality metrics."""
    return variant(art.name, label=label, art=art, bench=bench, runtime=bench.runtime, quality=quality,
                   steps=[s.config for s in art.lineage] if art.lineage else ())


def document(kind: str, *, baseline: dict[str, Any], candidates: Sequence[dict[str, Any]], chosen: str | None,
             model: Mapping[str, Any], threads: int | None = None, data: Mapping[str, Any] | None = None,
             timing: Mapping[str, Any] | None = None, notes: Sequence[str] = (), **sections: Any) -> dict[str, Any]:
    """Assemble the versioned document; ``sections`` adds the optional parts (target, goals, recipe, ...)."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    result = next((c for c in candidates if c["name"] == chosen), None)
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(threads), "model": dict(model), "data": dict(data) if data else None,
        "baseline": baseline, "candidates": list(candidates),
        "chosen": None if result is None else {
            "name": result["name"], "runtime": result["runtime"], "path": result.get("file"),
            "speedup_p50": speedups(baseline, result)},
        "result": result,
        "comparison": comparison(baseline, result),
        "timing": dict(timing or {}), "notes": list(notes),
        "recipe": {}, "lineage": [], "checks": [], "verification": None,
    }
    doc.update(sections)
    doc["warnings"] = warnings(doc)
    return doc


def build_report(*, baseline: dict[str, Any], result: dict[str, Any], artifact: Artifact,
                 recipe: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                 threads: int | None = None, timing: Mapping[str, Any] | None = None,
                 kind: str = "recipe") -> dict[str, Any]:
    """The document of one recipe run (or one quantization): the baseline against its result.

    Example:
        >>> # report = build_report(baseline=b, result=r, artifact=final_art, recipe=recipe.to_dict())
    """
    result = {**result, "status": "chosen"}
    return document(kind, baseline=baseline, candidates=[result], chosen=result["name"], threads=threads,
                    model={"name": artifact.name, "task": artifact.meta.get("task"),
                           "source_id": artifact.source_id},
                    data=data, timing=timing, recipe=dict(recipe or {}),
                    lineage=[s.to_dict() for s in artifact.lineage],
                    checks=[{**c.to_dict(), "step_name": artifact.lineage[c.step - 1].name if c.step else "load"}
                            for c in artifact.checks])


def speedups(baseline: Mapping[str, Any], v: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for b, t in v["latency_ms"].items():
        base = baseline["latency_ms"].get(b)
        if base:
            out[b] = round(base["p50"] / t["p50"], 3) if t["p50"] > 0 else None
    return out


def comparison(baseline: Mapping[str, Any], result: Mapping[str, Any] | None) -> dict[str, Any]:
    if result is None:
        return {"speedup_p50": {}, "ratio": {}, "size_ratio": None}
    return {"speedup_p50": speedups(baseline, result), "ratio": dict(result.get("ratio") or {}),
            "size_ratio": round(baseline["size_mb"] / result["size_mb"], 3)
            if result["size_mb"] and baseline["size_mb"] else None}


def warnings(doc: Mapping[str, Any]) -> list[str]:
    """What a reader must not miss, most serious first: the handed-back variant is slower somewhere, the timing was
    too noisy to decide, a check failed, a goal was missed."""
    out = []
    res = doc.get("result")
    if res is not None:
        slow = [f"batch {b}: {r['speedup']:.2f}x [{r['lo']:.2f}, {r['hi']:.2f}]"
                for b, r in (res.get("ratio") or {}).items() if r["verdict"] == SLOWER]
        if slow:
            out.append(f"SLOWER than the baseline ({'; '.join(slow)}); do not ship it for that workload")
    if (doc.get("timing") or {}).get("noisy"):
        out.append(f"timing: {doc['timing'].get('note', 'the machine was too noisy to decide')}; ratios inside "
                   "their intervals are ties")
    for c in doc.get("checks") or []:
        if not c.get("passed", True):
            out.append(f"check {c['name']} failed: {str(c.get('detail', ''))[:200]}")
    for g in doc.get("goal_results") or []:
        if not g.get("met", True):
            out.append(f"goal missed: {g['text']}")
    return out


def timing_section(results: Sequence[BenchResult]) -> dict[str, Any]:
    """How the variants were timed: the one loop's note and whether it was too noisy to decide."""
    noisy = any(r.noisy for r in results)
    note = next((r.timing_note for r in results if r.noisy), results[0].timing_note if results else "")
    return {"method": "interleaved rounds; 95% distribution-free intervals of each median and each ratio",
            "note": note, "noisy": noisy}


def _finite(v: Any) -> Any:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
