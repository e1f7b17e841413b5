"""The report's plots, drawn from the document only: latency per batch size (median with its interval and p95),
size, and the latency-quality plane with the Pareto front of those two axes."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from slimforge.core.outputs import atomic_path

STATUS_COLORS = {"baseline": "#1f77b4", "chosen": "#d62728", "accepted": "#2ca02c", "measured": "#2e86de",
                 "rejected": "#7f7f7f", "failed": "#7f7f7f", "skipped": "#7f7f7f"}


def variants(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The baseline (id "B"), then every measured candidate (id: its number in the report's candidate list, as in
    every table and plot)."""
    return [{**report["baseline"], "status": "baseline", "id": "B"},
            *[{**c, "id": str(i + 1)} for i, c in enumerate(report["candidates"]) if c["latency_ms"]]]


def quality_key(report: dict[str, Any]) -> str | None:
    keys = [k for v in variants(report) for k in (v.get("quality") or {})]
    for k in ("accuracy", "cosine", "top10_agreement"):
        if k in keys:
            return k
    return keys[0] if keys else None


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any, plt: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_pngs(plots: dict[str, tuple[str, bytes]], out_dir: Path) -> dict[str, Path]:
    """Write ``{key: (file name, PNG bytes)}`` into ``out_dir`` atomically; ``{key: path}``."""
    paths = {}
    for key, (name, data) in plots.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(data)
        paths[key] = out_dir / name
    return paths


def render_plots(report: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    """``{key: (file name, PNG bytes)}``: latency, size and, with a quality metric, the Pareto plot."""
    plt = pyplot()
    vs = variants(report)
    out = {"plot_latency": ("latency.png", _latency(vs, plt)), "plot_size": ("size.png", _size(vs, plt))}
    qk = quality_key(report)
    if qk is not None:
        name = "pareto.png" if report.get("kind") == "search" else "latency_vs_quality.png"
        out["plot_tradeoff"] = (name, _pareto(report, vs, qk, plt))
    return out


def _numbered(vs: list[dict[str, Any]]) -> list[str]:
    return [v["id"] for v in vs]


def _latency(vs: list[dict[str, Any]], plt: Any) -> bytes:
    batches = sorted({int(b) for v in vs for b in v["latency_ms"]})
    tags = _numbered(vs)
    fig, axes = plt.subplots(1, len(batches), figsize=(max(4.5, 0.55 * len(vs) + 2) * len(batches), 4.0),
                             squeeze=False)
    for ax, b in zip(axes[0], batches):
        rows = [(t, v, v["latency_ms"].get(str(b))) for t, v in zip(tags, vs) if v["latency_ms"].get(str(b))]
        xs = range(len(rows))
        p50 = [r[2]["p50"] for r in rows]
        lo = [max(r[2]["p50"] - (r[2].get("ci") or [r[2]["p50"]] * 2)[0], 0) for r in rows]
        hi = [max((r[2].get("ci") or [r[2]["p50"]] * 2)[1] - r[2]["p50"], 0) for r in rows]
        ax.bar(xs, p50, color=[STATUS_COLORS.get(r[1]["status"], "#7f7f7f") for r in rows])
        ax.errorbar(xs, p50, yerr=[lo, hi], fmt="none", ecolor="black", capsize=4)
        ax.scatter(xs, [r[2]["p95"] for r in rows], marker="_", s=200, color="black", label="p95")
        ax.set_xticks(list(xs), [r[0] for r in rows])
        ax.set_title(f"batch {b}: median latency (ms), 95% interval; dash: p95", fontsize=9)
        ax.legend(fontsize=7)
    fig.text(0.01, 0.01, "  ".join(f"{t}: {v['name'][:40]}" for t, v in zip(tags, vs)), fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return png(fig, plt)


def _size(vs: list[dict[str, Any]], plt: Any) -> bytes:
    tags = _numbered(vs)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * len(vs) + 2), 3.6))
    bars = ax.bar(tags, [v["size_mb"] or 0 for v in vs], color=[STATUS_COLORS.get(v["status"]) for v in vs])
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_title("size on disk (MB); B = baseline, numbers as in the tables", fontsize=9)
    fig.tight_layout()
    return png(fig, plt)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates on (lower latency, higher quality), by latency.

    Example:
        >>> pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.93), (0.5, 0.5)])
        [3, 0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _pareto(report: dict[str, Any], vs: list[dict[str, Any]], qk: str, plt: Any) -> bytes:
    b = str(report.get("goal_batch") or min(int(k) for k in report["baseline"]["latency_ms"]))
    tags = _numbered(vs)
    pts = [(t, v) for t, v in zip(tags, vs) if b in v["latency_ms"] and
           isinstance((v.get("quality") or {}).get(qk), (int, float))]
    fig, ax = plt.subplots(figsize=(8, 5))
    xy = [(v["latency_ms"][b]["p50"], float(v["quality"][qk])) for _, v in pts]
    for (t, v), (x, y) in zip(pts, xy):
        ax.scatter(x, y, s=60, color=STATUS_COLORS.get(v["status"], "#7f7f7f"), zorder=3)
    _label(ax, [t for t, _ in pts], xy)
    front = pareto_front(xy)
    if len(front) > 1:
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "--", color="black", linewidth=0.8,
                label=f"Pareto front (latency at batch {b}, {qk})")
    for g in report.get("goal_results") or []:
        if g["name"].startswith(("cosine", "accuracy")):
            ax.axhline(g["target"], color="#ff7f0e", linestyle=":", label=f"goal: {g['name']}")
    ax.set_xscale("log")
    ax.set_xlabel(f"median latency at batch {b} (ms, log scale)")
    ax.set_ylabel(qk)
    ax.set_title("B baseline (blue), red chosen, green meets the goals, grey rejected", fontsize=8)
    ax.grid(alpha=0.3)
    if len(front) > 1 or report.get("goal_results"):
        ax.legend(fontsize=7, loc="lower right")
    fig.text(0.01, 0.01, "  ".join(f"{t}: {v['name'][:40]}" for t, v in pts), fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return png(fig, plt)


def _label(ax: Any, tags: list[str], xy: list[tuple[float, float]]) -> None:
    """Short tags beside the points; points that sit on top of each other share one label ("2,5")."""
    groups: list[tuple[tuple[float, float], list[str]]] = []
    for t, (x, y) in zip(tags, xy):
        for (gx, gy), names in groups:
            if abs(gx - x) <= 0.04 * max(abs(gx), 1e-9) and abs(gy - y) <= 0.002 * max(abs(gy), 1e-9):
                names.append(t)
                break
        else:
            groups.append(((x, y), [t]))
    ys = [y for _, y in xy]
    span = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for (x, y), names in groups:  # a label near an earlier one goes below its point instead of above
        near = any(abs(math.log(max(x, 1e-12) / max(px, 1e-12))) < 0.08 and abs(y - py) < 0.04 * span
                   for px, py in placed)
        ax.annotate(",".join(names), (x, y), fontsize=8, xytext=(5, -12 if near else 5), textcoords="offset points")
        placed.append((x, y))
