"""Rendering a report: JSON, CSV, HTML and PNG plots, each written atomically."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from slimforge.core.context import atomic_path
from slimforge.core.outputs import write_text


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.csv``, the PNG plots and ``report.html`` into ``out_dir``.

    Example:
        >>> # paths = write_report(report, Path("slimforge-out")); paths["html"]
    """
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "report.json", "csv": out_dir / "report.csv", "html": out_dir / "report.html"}
    write_text(paths["json"], json.dumps(report, indent=2, default=str))
    write_text(paths["csv"], _csv(report))
    paths.update(_plots(report, out_dir))
    write_text(paths["html"], _html(report, {k: v.name for k, v in paths.items() if k.startswith("plot_")}))
    return paths


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for v in report["variants"]:
        for b, t in v["latency_ms"].items():
            row = {"variant": v["label"], "format": v["format"], "runtime": v["runtime"], "threads": v["threads"],
                   "batch": int(b), "p50_ms": t["p50"], "p95_ms": t["p95"], "p99_ms": t["p99"], "mean_ms": t["mean"],
                   "n": t["n"], "throughput_per_s": v["throughput"].get(b), "peak_memory_mb": v["peak_memory_mb"],
                   "size_mb": v["size_mb"]}
            row.update({f"q_{k}": q for k, q in v["quality"].items()})
            rows.append(row)
    return rows


def _csv(report: dict[str, Any]) -> str:
    rows = _rows(report)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _plots(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    labels = [v["label"] for v in variants]
    batches = sorted({int(b) for v in variants for b in v["latency_ms"]})
    out: dict[str, Path] = {}

    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.6), squeeze=False)
    for ax, b in zip(axes[0], batches):
        p50 = [v["latency_ms"].get(str(b), {}).get("p50", 0) for v in variants]
        p95 = [v["latency_ms"].get(str(b), {}).get("p95", 0) for v in variants]
        bars = ax.bar(labels, p50, color=_colors(len(labels)))
        ax.errorbar(labels, p50, yerr=[[0] * len(p50), [max(h - m, 0) for h, m in zip(p95, p50)]], fmt="none",
                    ecolor="black", capsize=4, label="p95")
        ax.bar_label(bars, fmt="%.1f", label_type="center", color="white", fontweight="bold")
        ax.set_title(f"latency p50 (ms), batch {b}; whisker: p95")
        ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    out["plot_latency"] = _save(fig, out_dir / "latency.png", plt)

    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    bars = ax.bar(labels, [v["size_mb"] for v in variants], color=_colors(len(labels)))
    ax.bar_label(bars, fmt="%.1f")
    ax.set_title("size on disk (MB)")
    fig.tight_layout()
    out["plot_size"] = _save(fig, out_dir / "size.png", plt)

    qkey = _quality_key(report)
    if qkey:
        b = str(batches[-1])
        fig, ax = plt.subplots(figsize=(5, 3.8))
        for v, c in zip(variants, _colors(len(variants))):
            q = v["quality"].get(qkey, 1.0 if v is report["baseline"] else None)
            if q is None or v["latency_ms"].get(b) is None:
                continue
            ax.scatter(v["latency_ms"][b]["p50"], float(q), s=80, color=c, label=v["label"])
            ax.annotate(v["label"], (v["latency_ms"][b]["p50"], float(q)), textcoords="offset points", xytext=(6, 4))
        ax.margins(x=0.3, y=0.2)
        ax.set_xlabel(f"latency p50 at batch {b} (ms)")
        ax.set_ylabel(qkey)
        ax.set_title("latency vs quality")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out["plot_tradeoff"] = _save(fig, out_dir / "latency_vs_quality.png", plt)
    return out


def _quality_key(report: dict[str, Any]) -> str | None:
    keys = list(report["result"]["quality"])
    for k in ("accuracy", "cosine", "top10_agreement"):
        if k in keys:
            return k
    return keys[0] if keys else None


def _colors(n: int) -> list[str]:
    palette = ["#7f8c8d", "#2e86de", "#10ac84", "#ee5253", "#ff9f43", "#5f27cd", "#01a3a4"]
    return [palette[i % len(palette)] for i in range(n)]


def _save(fig: Any, path: Path, plt: Any) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _html(report: dict[str, Any], plots: dict[str, str]) -> str:
    e = html.escape
    env = report["environment"]
    head = ("<tr><th>variant</th><th>runtime</th><th>batch</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th>"
            "<th>items/s</th><th>peak MB</th><th>size MB</th><th>quality</th></tr>")
    body = []
    for r in _rows(report):
        q = ", ".join(f"{k[2:]}={_fmt(v)}" for k, v in r.items() if k.startswith("q_"))
        body.append(f"<tr><td>{e(r['variant'])}</td><td>{e(r['runtime'])}</td><td>{r['batch']}</td>"
                    f"<td>{r['p50_ms']:.2f}</td><td>{r['p95_ms']:.2f}</td><td>{r['p99_ms']:.2f}</td>"
                    f"<td>{_fmt(r['throughput_per_s'])}</td><td>{_fmt(r['peak_memory_mb'])}</td>"
                    f"<td>{_fmt(r['size_mb'])}</td><td>{e(q)}</td></tr>")
    checks = "".join(f"<tr><td>{e(c['name'])}</td><td>{'pass' if c['passed'] else 'FAIL'}</td>"
                     f"<td>{e(c['detail'][:300])}</td></tr>" for c in report["checks"])
    steps = "".join(f"<li><code>{e(s['name'])}</code> {e(json.dumps(s['config']))}</li>" for s in report["lineage"])
    imgs = "".join(f'<img src="{e(p)}" alt="{e(k)}">' for k, p in plots.items())
    speed = ", ".join(f"batch {b}: {v}x" for b, v in report["comparison"]["speedup_p50"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>slimforge report: {e(report['model']['name'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}th{{background:#f3f3f3}}img{{max-width:100%;margin:8px}}</style>
</head><body><h1>slimforge report: {e(report['model']['name'])}</h1>
<p>Speed-up (p50): {e(speed)}. Size: {report['baseline']['size_mb']:.1f} MB &rarr; {report['result']['size_mb']:.1f} MB.</p>
<h2>Measurements</h2><table>{head}{''.join(body)}</table>
<h2>Plots</h2>{imgs}
<h2>Recipe</h2><ol>{steps}</ol>
<h2>Checks</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>{checks}</table>
<h2>Environment</h2><pre>{e(json.dumps(env, indent=2))}</pre>
<p><small>schema {e(report['schema'])} v{report['schema_version']}, created {e(report['created'])}</small></p>
</body></html>"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
