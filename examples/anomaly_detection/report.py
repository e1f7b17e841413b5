"""What the lab writes: ``optimization_report.csv`` (one row per variant), ``optimization_complete.png`` (latency,
cost and size per variant against the seed's goals) and ``report.md`` (the figures, the goals met or missed, and a
recommendation)."""

from __future__ import annotations

import csv
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages import PRICES, Variant, cost_per_1000

# the seed's goals
LATENCY_CUT, COST_CUT, MAX_SIZE_MB, MIN_PRECISION, MIN_ACCURACY = 80.0, 70.0, 30.0, 95.0, 95.0

COLUMNS = ["variant", "runtime", "file", "size_mb", "batch_small", "batch_large", "p50_ms_small", "p95_ms_small",
           "p50_ms_large", "p95_ms_large", "throughput_small_per_s", "throughput_large_per_s", "accuracy_pct",
           "precision_pct", "recall_pct", "f1_pct", "cost_per_1000_usd", "latency_reduction_pct",
           "cost_reduction_pct"]


@dataclass
class Row:
    """One variant's figures. Cost: 1,000 inferences at the CPU price with the CPU fully loaded at the large batch;
    latency reduction: p50 at batch 1 against PyTorch FP32."""

    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def rows_for(variants: list[Variant], batch_sizes: tuple[int, int]) -> list[Row]:
    small, large = batch_sizes
    base = variants[0]
    base_lat = base.bench.latency_ms[small].p50
    base_cost = cost_per_1000(base.bench.throughput[large])
    rows = []
    for v in variants:
        b = v.bench
        cost = cost_per_1000(b.throughput[large])
        rows.append(Row({
            "variant": v.label, "runtime": v.runtime, "file": v.file.name if v.file else "",
            "size_mb": round(v.size_mb, 3), "batch_small": small, "batch_large": large,
            "p50_ms_small": round(b.latency_ms[small].p50, 4), "p95_ms_small": round(b.latency_ms[small].p95, 4),
            "p50_ms_large": round(b.latency_ms[large].p50, 4), "p95_ms_large": round(b.latency_ms[large].p95, 4),
            "throughput_small_per_s": round(b.throughput[small], 2),
            "throughput_large_per_s": round(b.throughput[large], 2),
            "accuracy_pct": round(v.quality["accuracy"], 3), "precision_pct": round(v.quality["precision"], 3),
            "recall_pct": round(v.quality["recall"], 3), "f1_pct": round(v.quality["f1"], 3),
            "cost_per_1000_usd": round(cost, 8),
            "latency_reduction_pct": round(100.0 * (1.0 - b.latency_ms[small].p50 / base_lat), 2),
            "cost_reduction_pct": round(100.0 * (1.0 - cost / base_cost), 2)}))
    return rows


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r.values)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [textwrap.fill(r["variant"], 15) for r in rows]
    colours = ["#7f7f7f"] + ["#1f77b4", "#2ca02c", "#d62728", "#9467bd"][:len(rows) - 1]
    base = rows[0]
    panels = [("p50_ms_small", f"latency p50 at batch {base['batch_small']} (ms)", base["p50_ms_small"]
               * (1 - LATENCY_CUT / 100), f"goal: -{LATENCY_CUT:.0f}% latency"),
              ("cost_per_1000_usd", f"\\$ per 1,000 inferences (CPU at \\${PRICES['cpu']:.2f}/h, batch "
               f"{base['batch_large']})", base["cost_per_1000_usd"] * (1 - COST_CUT / 100),
               f"goal: -{COST_CUT:.0f}% cost"),
              ("size_mb", "model file (MB)", MAX_SIZE_MB, f"goal: < {MAX_SIZE_MB:.0f} MB")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    for ax, (key, title, goal, goal_label) in zip(axes, panels):
        values = [r[key] for r in rows]
        bars = ax.bar(range(len(rows)), values, color=colours)
        ax.axhline(goal, color="black", linestyle="--", linewidth=1.2, label=goal_label)
        if key != "size_mb":
            ax.axhline(base[key], color="#7f7f7f", linestyle=":", linewidth=1, label="before (PyTorch FP32)")
        for bar, r, value in zip(bars, rows, values):
            change = {"p50_ms_small": r["latency_reduction_pct"], "cost_per_1000_usd": r["cost_reduction_pct"]}
            extra = ("" if key not in change else "\nbaseline" if r is base else f"\n{-change[key]:+.1f}%")
            ax.annotate(f"{value:.3g}{extra}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, max(values + [goal]) * 1.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Anomaly-detection ViT: before (PyTorch FP32) and after, per variant", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def recommend(rows: list[Row], devices: list[dict[str, Any]]) -> tuple[int, str]:
    """The cheapest variant that keeps the quality goals (accuracy, precision) and the size goal; if none does,
    the cheapest whose accuracy is within one point of PyTorch FP32's. Then CPU or GPU, by cost where both ran."""
    def ok(r: Row) -> bool:
        return (r["accuracy_pct"] >= MIN_ACCURACY and r["precision_pct"] > MIN_PRECISION
                and r["size_mb"] < MAX_SIZE_MB)

    pool = [i for i, r in enumerate(rows) if ok(r)]
    why = "meets the accuracy, precision and size goals at the lowest cost"
    if not pool:
        pool = [i for i, r in enumerate(rows) if r["accuracy_pct"] >= rows[0]["accuracy_pct"] - 1.0]
        why = ("is the cheapest variant within one accuracy point of PyTorch FP32 (no variant meets every quality "
               "goal: the model itself falls short of them)")
    best = min(pool, key=lambda i: (rows[i]["cost_per_1000_usd"], rows[i]["p95_ms_small"]))
    r = rows[best]
    text = (f"Deploy **{r['variant']}** (`{r['file']}`) on the **CPU**: it {why}: {r['p50_ms_small']:.2f} ms p50 / "
            f"{r['p95_ms_small']:.2f} ms p95 at batch {r['batch_small']}, ${r['cost_per_1000_usd']:.6f} per 1,000 "
            f"inferences ({-r['cost_reduction_pct']:+.1f}% cost and {-r['latency_reduction_pct']:+.1f}% latency vs PyTorch "
            f"FP32)"
            f", accuracy {r['accuracy_pct']:.2f}%, precision {r['precision_pct']:.2f}%.")
    gpu = [d for d in devices if d["device"] == "cuda" and d["measured"]]
    cpu = [d for d in devices if d["device"] == "cpu" and d["measured"]]
    if gpu and cpu:
        g, c = max(gpu, key=lambda d: d["batch"]), max(cpu, key=lambda d: d["batch"])
        cheaper = "GPU" if (g["cost_per_1000"] or math.inf) < (c["cost_per_1000"] or math.inf) else "CPU"
        text += (f" CPU vs GPU (PyTorch FP32, batch {g['batch']}): ${c['cost_per_1000']:.6f} vs "
                 f"${g['cost_per_1000']:.6f} per 1,000; the {cheaper} is cheaper at full load"
                 + (" - at high, steady volume consider the GPU." if cheaper == "GPU" else "."))
    else:
        reason = next((d["reason"] for d in devices if d["device"] == "cuda"), "no CUDA device")
        text += f" The GPU was not measured on this machine ({reason}), so no GPU recommendation is made."
    return best, text


def write_markdown(path: Path, *, rows: list[Row], devices: list[dict[str, Any]], load: dict[str, Any] | None,
                   served: str, info: dict[str, Any]) -> None:
    base = rows[0]
    int8 = next(r for r in rows if "INT8" in r["variant"] and "PyTorch" in r["variant"])
    best_lat = max(rows[1:], key=lambda r: r["latency_reduction_pct"])
    best_cost = max(rows[1:], key=lambda r: r["cost_reduction_pct"])
    best, rec = recommend(rows, devices)
    goals = [
        (f"latency -{LATENCY_CUT:.0f}% (p50, batch {base['batch_small']})",
         best_lat["latency_reduction_pct"] >= LATENCY_CUT,
         f"best: {best_lat['variant']} {-best_lat['latency_reduction_pct']:+.1f}% "
         f"({base['p50_ms_small']:.3f} -> {best_lat['p50_ms_small']:.3f} ms)"),
        (f"cost -{COST_CUT:.0f}% (CPU, batch {base['batch_large']})", best_cost["cost_reduction_pct"] >= COST_CUT,
         f"best: {best_cost['variant']} {-best_cost['cost_reduction_pct']:+.1f}% (${base['cost_per_1000_usd']:.6f}"
         f" -> ${best_cost['cost_per_1000_usd']:.6f} per 1,000)"),
        (f"INT8 model file < {MAX_SIZE_MB:.0f} MB", int8["size_mb"] < MAX_SIZE_MB, f"{int8['size_mb']:.2f} MB"),
        (f"INT8 precision (anomaly class, held-out) > {MIN_PRECISION:.0f}%", int8["precision_pct"] > MIN_PRECISION,
         f"{int8['precision_pct']:.2f}% (recall {int8['recall_pct']:.2f}%)"),
        (f"held-out accuracy >= {MIN_ACCURACY:.0f}% (PyTorch FP32)", base["accuracy_pct"] >= MIN_ACCURACY,
         f"{base['accuracy_pct']:.2f}%"),
    ]
    lines = [
        "# Anomaly detection lab: optimization report", "",
        f"Data: {info['data']}. Model: {info['model']}. Trained on {info['device']} in {info['train_s']:.0f} s. "
        f"Decision threshold on the anomaly probability: {info['threshold']['threshold']:.2f}, chosen on validation "
        f"crops the model did not train on ({info['threshold']['val_accuracy_at_0.5']:.2f}% at 0.5, "
        f"{info['threshold']['val_accuracy']:.2f}% at the threshold) and built into the model's last layer, so "
        f"every variant applies it. Lab run: {info['mode']} mode, seed {info['seed']}.", "",
        "## The seed's goals", "", "| goal | verdict | figure |", "|---|---|---|",
        *[f"| {name} | {_mark(ok)} | {fig} |" for name, ok, fig in goals], "",
        f"Goals met: {sum(ok for _, ok, _ in goals)} of {len(goals)}.", "",
        "## Variants", "",
        f"Held-out quality measured by running each artifact on {info['n_test']} held-out crops; latency timed side "
        f"by side in interleaved rounds (`slimforge.benchmark`) on {info['threads']} CPU threads; cost per 1,000 "
        f"inferences at ${PRICES['cpu']:.2f}/hour with the CPU fully loaded at batch {base['batch_large']}.", "",
        "| variant | size MB | p50 / p95 ms (b=%d) | p50 / p95 ms (b=%d) | items/s (b=%d) | accuracy | precision | "
        "recall | $ / 1,000 | latency | cost |" % (base["batch_small"], base["batch_large"], base["batch_large"]),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['size_mb']:.2f} | {r['p50_ms_small']:.3f} / {r['p95_ms_small']:.3f} | "
            f"{r['p50_ms_large']:.2f} / {r['p95_ms_large']:.2f} | {r['throughput_large_per_s']:.0f} | "
            f"{r['accuracy_pct']:.2f}% | {r['precision_pct']:.2f}% | {r['recall_pct']:.2f}% | "
            f"{r['cost_per_1000_usd']:.6f} | {-r['latency_reduction_pct']:+.1f}% | {-r['cost_reduction_pct']:+.1f}% |")
    lines += ["", "![latency, cost and size per variant](optimization_complete.png)", "",
              "## CPU vs GPU (`slimforge.benchmark_devices`, PyTorch FP32)", "",
              "| device | batch | p50 ms | p95 ms | items/s | $ / 1,000 |", "|---|---|---|---|---|---|"]
    for d in devices:
        if d["measured"]:
            lines.append(f"| {d['device']} | {d['batch']} | {d['p50_ms']:.3f} | {d['p95_ms']:.3f} | "
                         f"{d['items_s']:.0f} | {d['cost_per_1000']:.6f} |")
        else:
            lines.append(f"| {d['device']} | {d['batch']} | not measured ({d['reason']}) | | | |")
    lines += ["", "![CPU vs GPU](benchmark_cpu_gpu.png)", "", "## Load test", ""]
    if load:
        lat = load["latency_ms"]
        lines.append(f"`slimforge serve {served}` and `slimforge loadtest` at concurrency {load['concurrency']} for "
                     f"{load['duration_s']:.0f} s: {load['requests']} requests, {load['throughput_rps']:.1f} req/s, "
                     f"p50 {lat['p50']:.1f} ms, **p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms**, "
                     f"errors {load['errors']}. (The load generator shares the CPU with the server.)")
    else:
        lines.append("Not run.")
    lines += ["", "## Recommendation", "", rec, "", "## Notes", "", *[f"- {n}" for n in info["notes"]], ""]
    path.write_text("\n".join(lines))
