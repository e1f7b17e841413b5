"""A profile's files: ``profile.json``, ``profile.csv`` (one row per layer), ``profile_layers.png`` (self time of
the top layers), ``roofline.png`` (each layer's achieved GFLOP/s against its arithmetic intensity, under the
device's compute and bandwidth ceilings) and a self-contained ``profile.html``. Everything is drawn from the
profile's document (``ProfileResult.to_dict()``); nothing is measured here."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from slimforge.core.outputs import write_text
from slimforge.report.plots import png, pyplot, write_pngs

COLUMNS = ("name", "kind", "self_ms", "pct", "calls", "flops", "params", "activation_bytes", "bytes_moved",
           "intensity", "gflops_s")


def write_profile(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the profile's files into ``out_dir`` atomically; returns their paths by kind."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "profile.json", "csv": out_dir / "profile.csv", "html": out_dir / "profile.html"}
    write_text(paths["json"], json.dumps(doc, indent=2, default=str))
    write_text(paths["csv"], to_csv(doc))
    plots = {"plot_layers": ("profile_layers.png", layers_png(doc)),
             "plot_roofline": ("roofline.png", roofline_png(doc))}
    paths.update(write_pngs(plots, out_dir))
    write_text(paths["html"], to_html(doc, plots))
    return paths


def to_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for layer in doc["layers"]:
        w.writerow(layer)
    return buf.getvalue()


def layers_png(doc: dict[str, Any], top: int = 20) -> bytes:
    """Horizontal bars: self time per layer (top ``top``), bottlenecks (> 5%) in red."""
    plt = pyplot()
    layers = doc["layers"][:top][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(layers) + 1.6))
    ax.barh([x["name"][-45:] for x in layers], [x["self_ms"] for x in layers],
            color=["#d62728" if x["pct"] > 0.05 else "#1f77b4" for x in layers])
    for i, x in enumerate(layers):
        ax.text(x["self_ms"], i, f" {100 * x['pct']:.1f}%", va="center", fontsize=8)
    ax.set_xlabel("self time per run (ms)")
    ax.set_title(f"{doc['model']} on {doc['runtime']} ({doc['device']}), batch {doc['batch']}: where the time goes")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return png(fig, plt)


def roofline_png(doc: dict[str, Any]) -> bytes:
    """Achieved GFLOP/s against FLOPs per byte for each layer with FLOPs, under the device's ceilings."""
    plt = pyplot()
    peak = doc.get("peak") or {}
    pts = [x for x in doc["layers"] if x.get("intensity") and x.get("gflops_s")]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [x["intensity"] for x in pts] or [1.0]
    lo, hi = min(xs + [0.1]) / 2, max(xs + [100.0]) * 2
    top, bw = peak.get("peak_gflops"), peak.get("bandwidth_gbs")
    if top and bw:
        import numpy as np

        grid = np.logspace(np.log10(lo), np.log10(hi), 200)
        ax.plot(grid, np.minimum(top, bw * grid), color="black", lw=1.5,
                label=f"roofline: {top:.0f} GFLOP/s ({peak.get('precision')}), {bw:.0f} GB/s")
    sizes = [max(15.0, 600 * x["pct"]) for x in pts]
    ax.scatter([x["intensity"] for x in pts], [x["gflops_s"] for x in pts], s=sizes,
               c=["#d62728" if x["pct"] > 0.05 else "#1f77b4" for x in pts], alpha=0.7)
    for x in sorted(pts, key=lambda p: -p["pct"])[:8]:
        ax.annotate(x["name"][-28:], (x["intensity"], x["gflops_s"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"roofline: {doc['model']} ({peak.get('device', doc['device'])})")
    if top and bw:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return png(fig, plt)


def to_html(doc: dict[str, Any], plots: dict[str, tuple[str, bytes]]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr class='{'hot' if x['pct'] > 0.05 else ''}'><td>{e(x['name'])}</td><td>{e(x['kind'])}</td>"
        f"<td>{x['self_ms']:.4f}</td><td>{100 * x['pct']:.1f}</td><td>{x['calls']:g}</td>"
        f"<td>{(x.get('flops') or 0) / 1e6:.2f}</td><td>{x.get('params') or ''}</td>"
        f"<td>{(x.get('activation_bytes') or 0) / 1024:.1f}</td><td>{_f(x.get('intensity'))}</td>"
        f"<td>{_f(x.get('gflops_s'))}</td></tr>" for x in doc["layers"])
    imgs = "".join(f'<figure><img alt="{e(n)}" src="data:image/png;base64,{base64.b64encode(p).decode()}">'
                   f"<figcaption>{e(n)}</figcaption></figure>" for n, p in plots.values())
    notes = "".join(f"<li>{e(str(n))}</li>" for n in doc.get("notes") or [])
    peak = doc.get("peak") or {}
    title = f"slimforge profile: {doc['model']} on {doc['runtime']} ({doc['device']}), batch {doc['batch']}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}}th{{background:#f3f3f3}}
tr.hot{{background:#fde2e2}}img{{max-width:100%}}figure{{display:inline-block;margin:6px}}</style></head><body>
<h1>{e(title)}</h1>
<p>End to end {doc['end_to_end_ms']:.3f} ms per run (timed without the profiler); the layers' self times sum to
{doc['total_self_ms']:.3f} ms ({100 * doc['coverage']:.0f}%). FLOPs per run: {(doc.get('flops') or 0) / 1e9:.4f} G.
Device peak at {e(str(peak.get('precision')))}: {_f(peak.get('peak_gflops'))} GFLOP/s, memory
{_f(peak.get('bandwidth_gbs'))} GB/s ({e(str(peak.get('source', '')))}).</p>
<p>Bottlenecks (layers over 5% of the time): {e(', '.join(doc.get('bottlenecks') or []) or 'none')}<br>
By block: {e(', '.join(f"{b['name']} {100 * b['pct']:.1f}%" for b in doc.get('blocks') or []))}</p>
{imgs}
<table><tr><th>layer</th><th>kind</th><th>self ms</th><th>%</th><th>calls</th><th>MFLOP</th><th>params</th>
<th>activations KiB</th><th>FLOP/byte</th><th>GFLOP/s</th></tr>{rows}</table>
<ul>{notes}</ul></body></html>"""


def _f(v: Any) -> str:
    return "" if v is None else f"{v:.3g}"
