"""Terminal rendering of reports: the search's candidate table, baseline vs optimized, and step checks."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

# markup off: user strings such as a path "[/x]" or a shape "[batch, 16]" print as they are
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)  # logs and pipes get wide tables
err_console = Console(stderr=True, markup=False)


def print_search(report: dict[str, Any], *, from_cache: bool = False) -> None:
    b = str(report["goal_batch"])
    qk = "accuracy" if "accuracy" in (report["baseline"].get("quality") or {}) else "cosine"
    table = Table(title=f"target {report['target']['name']}: candidates (p50 ms at batch {b})"
                        + (" [from cache]" if from_cache else ""))
    for col in ("candidate", "runtime", "status", f"p50 b{b}", "MB", qk, "why"):
        table.add_column(col, overflow="fold")
    base = report["baseline"]
    table.add_row(f"baseline {base['name']}", base["runtime"], "baseline",
                  f"{base['latency_ms'].get(b, {}).get('p50', float('nan')):.2f}", f"{base['size_mb']:.1f}",
                  f"{(base.get('quality') or {}).get(qk, float('nan')):.4f}", "")
    style = {"chosen": "bold green", "accepted": "green", "rejected": "", "failed": "red", "skipped": "dim"}
    for c in report["candidates"]:
        lat = c["latency_ms"].get(b, {}).get("p50")
        q = c["quality"].get(qk)
        table.add_row(c["name"], c["runtime"], c["status"] + (" *" if c["pareto"] else ""),
                      "" if lat is None else f"{lat:.2f}", "" if c["size_mb"] is None else f"{c['size_mb']:.1f}",
                      "" if q is None else f"{q:.4f}", c["reason"], style=style.get(c["status"], ""))
    console.print(table)
    for g in report["goal_results"]:
        console.print(("met    " if g["met"] else "missed ") + g["text"], highlight=False)
    if report.get("verification"):
        console.print(f"verified against the original: {report['verification']['detail']}", highlight=False)
    for n in report.get("notes", []):
        console.print(f"note: {n}", highlight=False)


def print_comparison(report: dict[str, Any]) -> None:
    base, res = report["baseline"], report["result"]
    console.print(f"{report['model']['name']}: baseline = {base['label']}, optimized = {res['label']}")
    table = Table()
    for col in ("metric", "baseline", "optimized", "ratio"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for b in base["latency_ms"]:
        for p in ("p50", "p95", "p99"):
            x, y = base["latency_ms"][b][p], res["latency_ms"][b][p]
            table.add_row(f"{p} ms, batch {b}", _ms(x), _ms(y), _ratio(x, y))
    for b in base["throughput"]:
        table.add_row(f"items/s, batch {b}", f"{base['throughput'][b]:.1f}", f"{res['throughput'][b]:.1f}", "")
    table.add_row("size MB", f"{base['size_mb']:.1f}", f"{res['size_mb']:.1f}",
                  f"{base['size_mb'] / res['size_mb']:.2f}x smaller" if res["size_mb"] else "")
    table.add_row("peak memory MB", f"{base['peak_memory_mb']:.1f}", f"{res['peak_memory_mb']:.1f}",
                  f"{base['peak_memory_mb'] / res['peak_memory_mb']:.2f}x less" if res["peak_memory_mb"] else "")
    for k, v in res["quality"].items():
        table.add_row(k, _fmt(base["quality"].get(k)), _fmt(v), "")
    console.print(table)
    slower = [b for b in base["latency_ms"] if res["latency_ms"][b]["p50"] > base["latency_ms"][b]["p50"]]
    if slower:
        console.print(f"warning: the optimized model is SLOWER than the baseline at batch "
                      f"{', '.join(slower)} (p50); do not ship it for that workload", soft_wrap=True)


def _ms(v: float) -> str:
    return f"{v:.2f}" if v >= 1 else f"{v:.3g}"


def _ratio(base: float, new: float) -> str:
    if new <= 0 or base <= 0:
        return ""
    return f"{base / new:.2f}x faster" if base >= new else f"{new / base:.2f}x slower"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_checks(art: Any) -> None:
    for c in art.checks:
        mark = "pass" if c.passed else "dropped"
        if c.name == "no_slowdown":
            continue
        key = {k: f"{v:.3g}" for k, v in c.metrics.items() if k in ("max_abs", "cosine", "sqnr_db", "drop",
                                                                      "max_drop")}
        console.print(f"check {c.name}: {mark} {key}", soft_wrap=True)
