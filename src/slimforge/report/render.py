"""Renderers of the one report document: JSON, CSV, PNG plots and one self-contained HTML page (plots embedded),
each written atomically. Nothing here measures or recomputes a figure: everything comes from the document."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from slimforge.core.outputs import write_text
from slimforge.report.plots import quality_key, render_plots, variants, write_pngs


def write_report(report: dict[str, Any], out_dir: Path, *, stem: str = "report") -> dict[str, Path]:
    """Write ``report.json``, ``report.csv``, the PNG plots and ``report.html`` (self-contained) into ``out_dir``.

    Example:
        >>> # paths = write_report(report, Path("slimforge-out")); paths["html"]
    """
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "csv": out_dir / f"{stem}.csv", "html": out_dir / f"{stem}.html"}
    write_text(paths["json"], json.dumps(report, indent=2, default=str))
    write_text(paths["csv"], to_csv(report))
    plots = render_plots(report)
    paths.update(write_pngs(plots, out_dir))
    write_text(paths["html"], to_html(report, plots))
    return paths


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant and batch size: file, method, timing with its interval, ratio to the baseline."""
    out = []
    for v in variants(report):
        for b, t in v["latency_ms"].items():
            r = (v.get("ratio") or {}).get(b) or {}
            ci = t.get("ci") or [t["p50"], t["p50"]]
            base = v["id"] == "B"
            row = {"id": v["id"], "variant": v["label"], "file": v.get("file") or "",
                   "method": v.get("method", v["runtime"]), "runtime": v["runtime"], "status": v["status"],
                   "threads": v.get("threads"), "batch": int(b), "p50_ms": t["p50"], "p50_lo_ms": ci[0],
                   "p50_hi_ms": ci[1], "p95_ms": t["p95"], "p99_ms": t["p99"], "mean_ms": t.get("mean"),
                   "n": t.get("n"), "speedup": r.get("speedup", 1.0 if base else ""), "speedup_lo": r.get("lo", ""),
                   "speedup_hi": r.get("hi", ""), "verdict": r.get("verdict", ""),
                   "shapes": json.dumps((v.get("shapes") or {}).get(b, {})),
                   "throughput_per_s": (v.get("throughput") or {}).get(b), "peak_memory_mb": v.get("peak_memory_mb"),
                   "size_mb": v["size_mb"], "reason": v.get("reason", ""),
                   **_roofline(v, int(b), t["p50"])}
            row.update({f"q_{k}": q for k, q in (v.get("quality") or {}).items()})
            out.append(row)
    return out


def _roofline(v: dict[str, Any], batch: int, p50_ms: float) -> dict[str, Any]:
    """FLOPs per item, achieved GFLOP/s (GOPS for INT8) at this batch and the fraction of the device's peak."""
    flops, peak = v.get("flops_per_item"), v.get("peak_gflops")
    achieved = flops * batch / p50_ms / 1e6 if flops and p50_ms else None
    return {"gflops_per_item": flops / 1e9 if flops else None, "achieved_gflops": achieved,
            "peak_fraction": achieved / peak if achieved and peak else None}


def to_csv(report: dict[str, Any]) -> str:
    rs = rows(report)
    fields: list[str] = []
    for r in rs:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields or ["variant"])
    w.writeheader()
    w.writerows(rs)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _table(headers: list[str], body: list[list[Any]], classes: list[str] | None = None) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    trs = "".join(f"<tr class='{e(classes[i]) if classes else ''}'>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in r)
                  + "</tr>" for i, r in enumerate(body))
    return f"<table><tr>{head}</tr>{trs}</table>"


def _measurements(report: dict[str, Any]) -> str:
    body, classes = [], []
    for r in rows(report):
        ratio = "" if r["speedup"] == "" else (f"{r['speedup']:.2f}x" + (
            f" [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}] {r['verdict']}" if r["verdict"] else ""))
        q = ", ".join(f"{k[2:]}={_fmt(v)}" for k, v in r.items() if k.startswith("q_"))
        body.append([r["id"], r["variant"], r["file"], r["method"], r["status"], r["batch"],
                     f"{r['p50_ms']:.3g} [{r['p50_lo_ms']:.3g}, {r['p50_hi_ms']:.3g}]", r["p95_ms"], r["p99_ms"],
                     ratio, r["shapes"], r["throughput_per_s"], _gflops(r), r["peak_memory_mb"], r["size_mb"], q])
        classes.append(r["status"] + (" slower" if r["verdict"] == "slower" else ""))
    return _table(["#", "variant", "file", "method", "status", "batch", "p50 ms [95% interval]", "p95 ms", "p99 ms",
                   "speedup vs baseline", "input shapes", "items/s", "GFLOP/s (% of peak)", "peak MB", "size MB",
                   "quality"], body, classes)


def _profiles(profiles: dict[str, Any] | None) -> str:
    """The baseline's and the winner's blocks side by side: where the time went, and where it goes now."""
    if not profiles or "baseline" not in profiles or "chosen" not in profiles:
        return ""
    b, c = profiles["baseline"], profiles["chosen"]
    names = list(dict.fromkeys([x["name"] for x in b["blocks"]] + [x["name"] for x in c["blocks"]]))
    cb, cc = {x["name"]: x for x in b["blocks"]}, {x["name"]: x for x in c["blocks"]}

    def cell(d: dict[str, Any], n: str) -> str:
        x = d.get(n)
        return "" if x is None else f"{x['self_ms']:.3g} ms ({100 * x['pct']:.1f}%)"

    body = [[n, cell(cb, n), cell(cc, n)] for n in names[:20]]
    body.append(["end to end", f"{b['end_to_end_ms']:.3g} ms", f"{c['end_to_end_ms']:.3g} ms"])
    return (f"<h2>Where the time goes: baseline ({html.escape(b['runtime'])}) and chosen "
            f"({html.escape(c['runtime'])}), batch {b['batch']}</h2>" + _table(["block", "baseline", "chosen"], body))


def _gflops(r: dict[str, Any]) -> str:
    if not r.get("achieved_gflops"):
        return ""
    return f"{r['achieved_gflops']:.4g}" + (f" ({100 * r['peak_fraction']:.1f}%)" if r.get("peak_fraction") else "")


def _env(env: dict[str, Any]) -> str:
    flat: list[list[Any]] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            flat.append([prefix, ", ".join(map(str, v)) if isinstance(v, list) else v])

    walk("", env)
    return _table(["", "value"], flat)


def to_html(report: dict[str, Any], plots: dict[str, tuple[str, bytes]]) -> str:
    e = html.escape
    warn = "".join(f"<li>{e(w)}</li>" for w in report.get("warnings") or [])
    chosen = report.get("chosen")
    speed = ", ".join(f"batch {b}: {v}x" for b, v in (report["comparison"]["speedup_p50"] or {}).items())
    head = (f"Chosen: <b>{e(chosen['name'])}</b> on {e(chosen['runtime'])}; speed-up (p50) {e(speed)}; size "
            f"{_fmt(report['baseline']['size_mb'])} MB &rarr; {_fmt(report['result']['size_mb'])} MB." if chosen else
            "No variant was chosen." + (" The original model is handed back." if report["kind"] == "search" else ""))
    cands = [[i + 1, c["name"], c.get("file") or "", c.get("method", ""), c["status"], c.get("reason", "")]
             for i, c in enumerate(report["candidates"])]
    goals = "".join(f"<li class='{'met' if g['met'] else 'missed'}'>{e(g['text'])}</li>"
                    for g in report.get("goal_results") or [])
    checks = _table(["check", "result", "detail"], [[c["name"], "pass" if c["passed"] else "FAIL",
                                                     str(c.get("detail", ""))[:300]] for c in report.get("checks")])
    steps = "".join(f"<li><code>{e(s.get('type', s.get('name', '')))}</code> {e(json.dumps(s))}</li>"
                    for s in (report.get("recipe") or {}).get("steps", []))
    imgs = "".join(f'<figure><img alt="{e(name)}" title="{e(name)}" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode()}"><figcaption>{e(name)}</figcaption></figure>'
                   for name, png in plots.values())
    ver = report.get("verification") or {}
    notes = "".join(f"<li>{e(n)}</li>" for n in report.get("notes") or [])
    timing = report.get("timing") or {}
    title = f"slimforge {report['kind']}: {report['model'].get('name', '')}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}}th{{background:#f3f3f3}}
img{{max-width:100%}}figure{{display:inline-block;margin:6px}}.warnings{{background:#fde2e2;border:2px solid #c00;
padding:.5em 1em}}tr.chosen{{background:#fde2e2}}tr.accepted{{background:#e6f4e6}}tr.slower td{{color:#b00;
font-weight:bold}}tr.skipped,tr.failed{{color:#888}}li.missed{{color:#b00;font-weight:bold}}li.met{{color:#060}}
</style></head><body><h1>{e(title)}</h1>
{f'<div class="warnings"><b>Warnings</b><ul>{warn}</ul></div>' if warn else ''}
<p>{head}</p>
{f"<p>Goals:</p><ul>{goals}</ul>" if goals else ''}
{f"<p>Verification against the original: {e(str(ver.get('detail')))}</p>" if ver else ''}
<h2>Measurements</h2><p>{e(timing.get('method', ''))}{'; ' if timing.get('note') else ''}{e(timing.get('note', ''))}</p>
{_measurements(report)}
<h2>Plots</h2>{imgs}
{_profiles(report.get("profiles"))}
<h2>Variants</h2>{_table(["#", "variant", "file", "method", "status", "why"], cands)}
{f"<h2>Recipe</h2><ol>{steps}</ol>" if steps else ''}
{f"<h2>Checks</h2>{checks}" if report.get("checks") else ''}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ''}
<h2>Environment</h2>{_env(report.get("environment") or {})}
<p><small>schema {e(report['schema'])} v{report['schema_version']}, created {e(report['created'])}</small></p>
</body></html>"""


__all__ = ["quality_key", "rows", "to_csv", "to_html", "write_report"]
