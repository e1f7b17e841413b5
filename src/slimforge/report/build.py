"""Building the report document."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping, Sequence

from slimforge.bench.timing import BenchResult
from slimforge.core.artifact import Artifact
from slimforge.env import environment
from slimforge.evaluation.metrics import Metric

SCHEMA = "slimforge.report"
SCHEMA_VERSION = 1


def variant_entry(label: str, art: Artifact, bench: BenchResult, quality: Mapping[str, Metric]) -> dict[str, Any]:
    """One measured variant: latency per batch size, throughput, memory, size, quality metrics."""
    return {
        "label": label,
        "name": art.name,
        "artifact_id": art.id,
        "format": art.format.value,
        "path": str(art.path) if art.path else None,
        "runtime": bench.runtime,
        "device": bench.device,
        "threads": bench.threads,
        "latency_ms": {str(b): t.to_dict() for b, t in bench.latency_ms.items()},
        "throughput": {str(b): round(v, 3) for b, v in bench.throughput.items()},
        "peak_memory_mb": bench.peak_memory_mb,
        "memory_method": bench.memory_method,
        "size_mb": round(art.size_bytes() / 1e6, 3),
        "quality": {k: _finite(m.value) for k, m in quality.items()},
    }


def build_report(*, baseline: dict[str, Any], result: dict[str, Any], artifact: Artifact,
                 recipe: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                 threads: int | None = None, extra_variants: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Assemble the versioned report document.

    Example:
        >>> # report = build_report(baseline=b, result=r, artifact=final_art, recipe=recipe.to_dict())
    """
    speedup = {}
    for b, t in result["latency_ms"].items():
        base = baseline["latency_ms"].get(b)
        if base:
            speedup[b] = round(base["p50"] / t["p50"], 3) if t["p50"] > 0 else None
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(threads),
        "model": {"name": artifact.name, "task": artifact.meta.get("task"), "source_id": artifact.source_id},
        "data": dict(data or {}),
        "recipe": dict(recipe or {}),
        "lineage": [s.to_dict() for s in artifact.lineage],
        "checks": [{**c.to_dict(), "step_name": artifact.lineage[c.step - 1].name if c.step else "load"}
                   for c in artifact.checks],
        "baseline": baseline,
        "result": result,
        "variants": [baseline, *extra_variants, result],
        "comparison": {
            "speedup_p50": speedup,
            "size_ratio": round(baseline["size_mb"] / result["size_mb"], 3) if result["size_mb"] else None,
        },
    }


def _finite(v: float) -> float | None | str:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
