"""The search report: every candidate with its numbers and verdict, the goals, and the Pareto plot."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from slimforge.core.context import atomic_path
from slimforge.core.outputs import write_text


def build(res: Any, *, recipe: dict[str, Any], artifact_path: Path | None, data_name: str | None) -> dict[str, Any]:
    from slimforge.env import environment

    base = res.baseline_measurement
    b = res.goal_batch
    best = res.best
    speedups = {}
    if best is not None:
        speedups = {str(k): base["latency"][k]["p50"] / v["p50"] for k, v in best.latency.items()
                    if k in base["latency"]}
    return {
        "schema": "slimforge.search/v1",
        "environment": environment(res.target.threads),
        "machine": res.machine,
        "target": res.target.to_dict(),
        "goals": res.goals.to_dict(),
        "goal_batch": b,
        "goals_met": res.goals_met,
        "goal_results": [g.to_dict() for g in res.goal_results],
        "notes": res.notes,
        "data": data_name,
        "baseline": {"name": res.baseline.name, "runtime": base["runtime"],
                     "latency_ms": {str(k): v for k, v in base["latency"].items()}, "size_mb": base["size_mb"],
                     "peak_memory_mb": base.get("peak_memory_mb"), "quality": base.get("quality")},
        "chosen": None if best is None else {"name": best.candidate.name, "runtime": best.candidate.runtime,
                                             "speedup_p50": speedups, "path": str(artifact_path) if artifact_path
                                             else None},
        "verification": None if res.verification is None else res.verification.to_dict(),
        "candidates": [e.to_dict() for e in res.evaluated],
        "recipe": recipe,
        "search_seconds": res.seconds,
        "steps_built": res.steps_built,
        "steps_from_cache": res.steps_cached,
    }


def write(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "search.json", "csv": out_dir / "search.csv", "html": out_dir / "search.html"}
    write_text(paths["json"], json.dumps(report, indent=2, default=str))
    write_text(paths["csv"], _csv(report))
    plot = _pareto_plot(report, out_dir / "pareto.png")
    if plot is not None:
        paths["pareto"] = plot
    write_text(paths["html"], _html(report, "pareto.png" if plot else None))
    return paths


def _qkey(report: dict[str, Any]) -> str:
    q = (report["baseline"].get("quality") or {})
    return "accuracy" if "accuracy" in q else "cosine"


def _csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    batches = sorted({int(b) for c in report["candidates"] for b in c["latency_ms"]})
    qk = _qkey(report)
    w.writerow(["candidate", "runtime", "precision", "status", *(f"p50_ms_b{b}" for b in batches), "size_mb",
                qk, "pareto", "reason"])
    base = report["baseline"]
    w.writerow([f"baseline: {base['name']}", base["runtime"], "fp32", "baseline",
                *(round(base["latency_ms"][str(b)]["p50"], 4) if str(b) in base["latency_ms"] else "" for b in batches),
                round(base["size_mb"], 3), (base.get("quality") or {}).get(qk), "", ""])
    for c in report["candidates"]:
        w.writerow([c["name"], c["runtime"], c["precision"], c["status"],
                    *(round(c["latency_ms"][str(b)]["p50"], 4) if str(b) in c["latency_ms"] else "" for b in batches),
                    "" if c["size_mb"] is None else round(c["size_mb"], 3), c["quality"].get(qk), c["pareto"],
                    c["reason"]])
    return buf.getvalue()


def _pareto_plot(report: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = str(report["goal_batch"])
    qk = _qkey(report)
    pts = [c for c in report["candidates"] if b in c["latency_ms"] and qk in c["quality"]]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"chosen": "#d62728", "accepted": "#2ca02c", "rejected": "#7f7f7f"}
    sizes = [max(c["size_mb"] or 1.0, 1.0) for c in pts]
    scale = 400.0 / max(sizes)
    for c, s in zip(pts, sizes):
        ax.scatter(c["latency_ms"][b]["p50"], c["quality"][qk], s=30 + s * scale, alpha=0.6,
                   color=colors.get(c["status"], "#7f7f7f"), edgecolors="black" if c["pareto"] else "none")
        ax.annotate(c["name"], (c["latency_ms"][b]["p50"], c["quality"][qk]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    front = sorted((c for c in pts if c["pareto"]), key=lambda c: c["latency_ms"][b]["p50"])
    if len(front) > 1:
        ax.plot([c["latency_ms"][b]["p50"] for c in front], [c["quality"][qk] for c in front], "--", color="black",
                linewidth=0.8, label="Pareto front")
    base = report["baseline"]
    if b in base["latency_ms"]:
        ax.axvline(base["latency_ms"][b]["p50"], color="#1f77b4", linestyle=":", label=f"baseline ({base['runtime']})")
    for g in report["goal_results"]:
        if g["name"].startswith(("cosine", "accuracy")):
            ax.axhline(g["target"], color="#ff7f0e", linestyle=":", label=f"goal: {g['name']}")
        if g["name"].startswith("latency"):
            ax.axvline(g["target"], color="#ff7f0e", linestyle="-.", label="goal: latency")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency p50 at batch {b} (ms, log scale)")
    ax.set_ylabel(qk + (" (%)" if qk == "accuracy" else " to baseline outputs"))
    ax.set_title("candidates: red chosen, green meets quality goals, grey rejected; area = size, ringed = Pareto")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _html(report: dict[str, Any], plot: str | None) -> str:
    e = html.escape
    b = str(report["goal_batch"])
    qk = _qkey(report)
    met = report["goals_met"]
    rows = []
    for c in report["candidates"]:
        lat = "; ".join(f"b{k}: {v['p50']:.2f}" for k, v in c["latency_ms"].items())
        q = c["quality"].get(qk)
        size = "" if c["size_mb"] is None else f"{c['size_mb']:.1f}"
        rows.append(f"<tr class='{e(c['status'])}'><td>{e(c['name'])}</td><td>{e(c['runtime'])}</td>"
                    f"<td>{e(c['status'])}{' (Pareto)' if c['pareto'] else ''}</td><td>{e(lat)}</td>"
                    f"<td>{size}</td>"
                    f"<td>{'' if q is None else f'{q:.4f}'}</td><td>{e(c['reason'])}</td></tr>")
    goals = "".join(f"<li class='{'met' if g['met'] else 'missed'}'>{e(g['text'])}</li>"
                    for g in report["goal_results"])
    notes = "".join(f"<li>{e(n)}</li>" for n in report["notes"])
    chosen = report["chosen"]
    head = (f"Chosen: <b>{e(chosen['name'])}</b> on {e(chosen['runtime'])}, speedup p50 " +
            ", ".join(f"batch {k}: {v:.2f}x" for k, v in chosen["speedup_p50"].items())) if chosen else \
        "No candidate beat the baseline: no gain on this target, the original model is handed back."
    ver = report.get("verification") or {}
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>slimforge search</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} tr.chosen{{background:#fde2e2}}
tr.accepted{{background:#e6f4e6}} tr.skipped,tr.failed{{color:#888}} li.missed{{color:#b00;font-weight:bold}}
li.met{{color:#060}}</style></head><body>
<h1>slimforge optimize: target {e(report['target']['name'])}</h1>
<p>{head}</p><p>Goals {'met' if met else '<b>NOT met</b>'}:</p><ul>{goals or '<li>none given</li>'}</ul>
<p>Verification against the original: {e(str(ver.get('detail', 'not run')))}</p>
<p>Baseline: {e(report['baseline']['name'])} on {e(report['baseline']['runtime'])}, p50 at batch {b}:
{report['baseline']['latency_ms'].get(b, {}).get('p50', float('nan')):.2f} ms, {report['baseline']['size_mb']:.1f} MB.
Search took {report['search_seconds']:.0f} s ({report['steps_built']} steps built, {report['steps_from_cache']} from
cache).</p>
{f"<img src='{plot}' alt='Pareto plot'>" if plot else ''}
<h2>Candidates</h2><table><tr><th>candidate</th><th>runtime</th><th>status</th><th>p50 ms</th><th>MB</th>
<th>{e(qk)}</th><th>why</th></tr>{''.join(rows)}</table>
<h2>Notes</h2><ul>{notes}</ul></body></html>"""
