"""The search's Pareto plot: every trained trial by predicted latency and validation accuracy (marker size: model
size), the front joined, the finalists' measured latency, the budget and the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimforge.report.plots import png, pyplot, write_pngs


def write_pareto(doc: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    metric = "cosine to the original" if doc.get("space") == "subnet" else "accuracy"
    fig, ax = plt.subplots(figsize=(8, 5.2))
    trained = [t for t in doc["trials"] if t["val_accuracy"] is not None]
    skipped = [t for t in doc["trials"] if t["val_accuracy"] is None]
    sizes = [max(t["size_mb"], 1e-3) for t in trained]
    top = max(sizes, default=1.0)
    ax.scatter([t["predicted_ms"] for t in trained], [100 * t["val_accuracy"] for t in trained],
               s=[20 + 180 * s / top for s in sizes], alpha=0.55, label="trained trials (size: model MB)")
    if skipped:
        floor = min([100 * t["val_accuracy"] for t in trained], default=90.0) - 1.0
        ax.scatter([t["predicted_ms"] for t in skipped], [floor] * len(skipped), marker="x", color="0.6",
                   label="predicted over a budget: not built")
    front = sorted((t for t in trained if t["trial"] in set(doc["front"])), key=lambda t: t["predicted_ms"])
    ax.plot([t["predicted_ms"] for t in front], [100 * t["val_accuracy"] for t in front], "-o", color="C1",
            label="Pareto front (predicted latency)")
    for t in doc["finalists"]:
        ax.annotate("", xy=(t["measured_ms"], 100 * t["val_accuracy"]), xytext=(t["predicted_ms"],
                    100 * t["val_accuracy"]), arrowprops={"arrowstyle": "->", "color": "C2"})
    if doc["finalists"]:
        ax.scatter([t["measured_ms"] for t in doc["finalists"]], [100 * t["val_accuracy"] for t in doc["finalists"]],
                   marker="s", color="C2", label="finalists, measured")
    chosen = doc.get("chosen")
    if chosen:
        ax.scatter([chosen["measured_ms"]], [100 * chosen["val_accuracy"]], marker="*", s=300, color="C3",
                   label=f"chosen: {chosen['arch']}")
    budget = doc["constraints"].get("max_latency_ms")
    if budget:
        ax.axvline(budget, color="C3", ls="--", lw=1, label=f"latency budget {budget:.3g} ms")
    base = doc.get("baseline") or {}
    if base.get("latency_ms") is not None and base.get("test_accuracy") is not None:
        ax.scatter([base["latency_ms"]], [100 * base["test_accuracy"]], marker="D", color="k",
                   label=f"baseline (held-out {metric})")
    ax.set_xlabel(f"latency at batch {doc['constraints']['batch']} (ms)")
    ax.set_ylabel(f"validation {metric} (%)")
    ax.set_title(f"architecture search: {doc.get('space', 'mobilenet_v3')} space")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return write_pngs({"p": (path.name, png(fig, plt))}, path.parent)["p"]
