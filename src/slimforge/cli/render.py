"""Terminal rendering of the one report document: every figure printed here is read from the document (nothing is
recomputed), and the warnings are the document's own, in the same words as the HTML."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from slimforge.report.render import rows

# markup off: user strings such as a path "[/x]" or a shape "[batch, 16]" print as they are
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)  # logs and pipes get wide tables
err_console = Console(stderr=True, markup=False)


def _ratio(r: dict[str, Any]) -> str:
    if r["speedup"] == "":
        return ""
    if r["verdict"] == "":
        return f"{r['speedup']:.2f}x"
    return f"{r['speedup']:.2f}x [{r['speedup_lo']:.2f}-{r['speedup_hi']:.2f}] {r['verdict']}"


def print_measurements(report: dict[str, Any], *, title: str = "measurements") -> None:
    """One row per variant and batch size: file, method, median with its interval, p95/p99, speedup over the
    baseline with its interval and verdict, input shapes, throughput, memory, size."""
    table = Table(title=title)
    for col in ("#", "variant", "file", "method", "batch", "p50 ms [95%]", "p95 ms", "p99 ms", "speedup vs B", "inputs",
                "items/s", "peak MB", "size MB"):
        table.add_column(col, overflow="fold", justify="left" if col in ("variant", "file", "method") else "right")
    for r in rows(report):
        shapes = r["shapes"].replace('"', "").replace(", ", " ").strip("{}")
        table.add_row(str(r["id"]), r["variant"], _short(r["file"]), r["method"], str(r["batch"]),
                      f"{r['p50_ms']:.3g} [{r['p50_lo_ms']:.3g}-{r['p50_hi_ms']:.3g}]", f"{r['p95_ms']:.3g}",
                      f"{r['p99_ms']:.3g}", _ratio(r), shapes, _num(r["throughput_per_s"], ".1f"),
                      _num(r["peak_memory_mb"], ".1f"), _num(r["size_mb"], ".1f"),
                      style="bold red" if r["verdict"] == "slower" else "")
    console.print(table)
    print_warnings(report)


def print_warnings(report: dict[str, Any]) -> None:
    for w in report.get("warnings") or []:
        console.print(f"warning: {w}", soft_wrap=True, highlight=False)
    timing = report.get("timing") or {}
    if timing.get("note") and not timing.get("noisy"):
        console.print(f"timing: {timing['note']}", soft_wrap=True, highlight=False)


def _short(path: str) -> str:
    return path if len(path) <= 48 else "..." + path[-45:]


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else ""


def print_search(report: dict[str, Any], *, from_cache: bool = False) -> None:
    """Baseline vs chosen (latency p50/p95/p99 per batch size, size, memory, quality), then every candidate with
    its status and the reason it lost."""
    chosen = report.get("result")
    if chosen is not None:
        print_comparison(report)
    b = str(report["goal_batch"])
    qk = "accuracy" if "accuracy" in (report["baseline"].get("quality") or {}) else "cosine"
    table = Table(title=f"target {report['target']['name']}: candidates (median ms at batch {b}, speedup over the "
                        "baseline with its 95% interval)" + (" [from cache]" if from_cache else ""))
    for col in ("candidate", "runtime", "status", f"p50 b{b}", "speedup", "MB", qk, "why"):
        table.add_column(col, overflow="fold")
    base = report["baseline"]
    table.add_row(f"baseline {base['name']}", base["runtime"], "baseline",
                  _num(base["latency_ms"].get(b, {}).get("p50"), ".3g"), "1.00x", _num(base["size_mb"], ".1f"),
                  _num((base.get("quality") or {}).get(qk), ".4f"), "")
    style = {"chosen": "bold green", "accepted": "green", "rejected": "", "failed": "red", "skipped": "dim"}
    for c in report["candidates"]:
        r = (c.get("ratio") or {}).get(b)
        ratio = f"{r['speedup']:.2f}x [{r['lo']:.2f}-{r['hi']:.2f}]" if r else ""
        table.add_row(c["name"], c["runtime"], c["status"] + (" *" if c.get("pareto") else ""),
                      _num(c["latency_ms"].get(b, {}).get("p50"), ".3g"), ratio, _num(c["size_mb"], ".1f"),
                      _num(c["quality"].get(qk), ".4f"), c["reason"], style=style.get(c["status"], ""))
    console.print(table)
    for g in report["goal_results"]:
        console.print(("met    " if g["met"] else "missed ") + g["text"], highlight=False)
    if report.get("verification"):
        console.print(f"verified against the original: {report['verification']['detail']}", highlight=False)
    for n in report.get("notes", []):
        console.print(f"note: {n}", highlight=False, soft_wrap=True)


def print_comparison(report: dict[str, Any]) -> None:
    """Baseline against the chosen variant: p50/p95/p99 per batch size with the speedup and its interval,
    throughput, size, memory, quality; then the document's warnings."""
    base, res = report["baseline"], report["result"]
    console.print(f"{report['model']['name']}: baseline = {base['label']}, chosen = {res['label']}"
                  + (f" ({res['file']})" if res.get("file") else ""), soft_wrap=True)
    table = Table()
    for col in ("metric", "baseline", "chosen", "ratio"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for b in base["latency_ms"]:
        r = (res.get("ratio") or {}).get(b)
        for p in ("p50", "p95", "p99"):
            x, y = base["latency_ms"][b][p], res["latency_ms"][b][p]
            ratio = (f"{r['speedup']:.2f}x [{r['lo']:.2f}-{r['hi']:.2f}] {r['verdict']}" if p == "p50" and r else
                     f"{x / y:.2f}x" if y else "")
            table.add_row(f"{p} ms, batch {b}", _num(x, ".3g"), _num(y, ".3g"), ratio)
    for b in base.get("throughput") or {}:
        table.add_row(f"items/s, batch {b}", _num(base["throughput"][b], ".1f"),
                      _num((res.get("throughput") or {}).get(b), ".1f"), "")
    table.add_row("size MB", _num(base["size_mb"], ".1f"), _num(res["size_mb"], ".1f"),
                  f"{report['comparison']['size_ratio']:.2f}x smaller" if report["comparison"].get("size_ratio")
                  else "")
    table.add_row("peak memory MB", _num(base.get("peak_memory_mb"), ".1f"), _num(res.get("peak_memory_mb"), ".1f"),
                  "")
    for k, v in (res.get("quality") or {}).items():
        table.add_row(k, _num((base.get("quality") or {}).get(k), ".4f"), _num(v, ".4f"), "")
    console.print(table)
    if report["kind"] != "search":
        print_warnings(report)


def print_checks(art: Any) -> None:
    for c in art.checks:
        mark = "pass" if c.passed else "dropped"
        if c.name == "no_slowdown":
            continue
        if c.name == "quantized_ops":  # what the method reached, in words
            console.print(f"check {c.name}: {mark} {c.detail}", soft_wrap=True)
            continue
        key = {k: f"{v:.3g}" for k, v in c.metrics.items() if k in ("max_abs", "cosine", "sqnr_db", "drop",
                                                                      "max_drop", "student_accuracy",
                                                                      "teacher_accuracy", "cosine_to_teacher")}
        console.print(f"check {c.name}: {mark} {key}", soft_wrap=True)


def print_cost(rows: list[Any], out_dir: Any) -> None:
    """The CPU-vs-GPU cost table (``bench.cost.DeviceRow``s)."""
    table = Table(title="CPU vs GPU: latency, throughput and cost at full load")
    for col in ("device", "batch", "p50 ms", "p95 ms", "p99 ms", "items/s", "$/hour", "$ per 1,000", "vs CPU"):
        table.add_column(col, justify="right" if col not in ("device",) else "left")
    for r in rows:
        if not r.measured:
            table.add_row(r.device, str(r.batch), f"not measured: {r.reason}", *[""] * 6)
            continue
        table.add_row(r.device, str(r.batch), f"{r.p50_ms:.3f}", f"{r.p95_ms:.3f}", f"{r.p99_ms:.3f}",
                      f"{r.items_s:.1f}", "" if r.price_per_hour is None else f"{r.price_per_hour:.2f}",
                      "" if r.cost_per_1000 is None else f"{r.cost_per_1000:.6f}",
                      "" if r.speedup_vs_cpu is None else f"{r.speedup_vs_cpu:.2f}x")
    console.print(table)
    console.print(f"written: {out_dir}/benchmark_cpu_gpu.csv, benchmark_cpu_gpu.json, benchmark_cpu_gpu.png")
