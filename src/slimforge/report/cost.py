"""The CPU-vs-GPU cost report: ``benchmark_cpu_gpu.csv``, ``.json`` and ``benchmark_cpu_gpu.png`` (latency and
throughput per device and batch size, and the cost of 1,000 inferences), drawn from the rows only."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from slimforge.core.outputs import write_text
from slimforge.report.plots import png, pyplot, write_pngs

COLUMNS = ("device", "batch", "measured", "reason", "p50_ms", "p95_ms", "p99_ms", "items_s", "price_per_hour",
           "cost_per_1000", "speedup_vs_cpu")
COLORS = {"cpu": "#1f77b4", "cuda": "#76b900"}


def write_cost_report(rows: Sequence[dict[str, Any]], out_dir: Path, *, model: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / "benchmark_cpu_gpu.csv", "json": out_dir / "benchmark_cpu_gpu.json",
             "plot": out_dir / "benchmark_cpu_gpu.png"}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(paths["csv"], buf.getvalue())
    write_text(paths["json"], json.dumps({"model": model, "rows": list(rows)}, indent=2, default=str))
    write_pngs({"plot": (paths["plot"].name, cost_png(rows, model))}, out_dir)
    return paths


def cost_png(rows: Sequence[dict[str, Any]], model: str) -> bytes:
    plt = pyplot()
    batches = sorted({r["batch"] for r in rows})
    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    width = 0.8 / max(len(devices), 1)
    panels = (("p50_ms", "latency p50 (ms)"), ("items_s", "throughput (items/s)"),
              ("cost_per_1000", "cost of 1,000 inferences ($)"))
    for ax, (key, label) in zip(axes, panels):
        for i, dev in enumerate(devices):
            by_b = {r["batch"]: r for r in rows if r["device"] == dev}
            xs = [j + i * width for j in range(len(batches))]
            vals = [by_b[b].get(key) or 0.0 for b in batches]
            ax.bar(xs, vals, width, label=dev, color=COLORS.get(dev, "#888"))
            for x, b in zip(xs, batches):
                r = by_b[b]
                text = ("not measured" if not r["measured"] else f"{r[key]:.3g}" if r.get(key) is not None
                        else "no price")
                ax.text(x, (r.get(key) or 0.0), text, ha="center", va="bottom", fontsize=7,
                        rotation=90 if not r["measured"] else 0)
        ax.set_xticks([j + width * (len(devices) - 1) / 2 for j in range(len(batches))])
        ax.set_xticklabels([f"batch {b}" for b in batches])
        ax.set_title(label)
        if key != "cost_per_1000":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"{model}: CPU vs GPU")
    fig.tight_layout()
    return png(fig, plt)
