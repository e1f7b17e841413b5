"""INT8 on real-image CNNs, as a user runs it: ``slimforge optimize MODEL --target cpu --data photos/`` on

- the stride-32 detector of the wild corpus (tests/wild.py): the chosen model against FP32 at batch 1, with its
  mAP@0.5 and box agreement (IoU 0.5) against FP32 on held-out photos;
- a ResNet-18 and a MobileNetV3-Large built from their published layer configs (random init, BatchNorm statistics
  from real photos, exported at 224x224 with a dynamic batch): the chosen INT8 against the best FP32 runtime at
  batch 1 and 32, with top-1 agreement.

Every figure comes from the search's report: candidates are timed side by side in interleaved rounds, so a ratio is
a ratio within one run, with its interval.

    python benchmarks/wild_int8.py [--models strided_detector,resnet18,mobilenet_v3] [--out ...json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def summarise(doc: dict) -> dict:
    """The chosen candidate against the baseline and the best FP32 candidate at each batch size."""
    cands = doc["candidates"]
    chosen = next((c for c in cands if c["status"] == "chosen"), None)
    out: dict = {"chosen": chosen["name"] if chosen else None,
                 "no_gain": any("no gain" in n for n in doc.get("notes", [])),
                 "task": next((n for n in doc.get("notes", []) if n.startswith("task:")), None)}
    if not chosen:
        return out
    out["quality"] = {k: v for k, v in chosen["quality"].items() if isinstance(v, (int, float))}
    out["precision"] = chosen.get("precision")
    fp32 = [c for c in cands if c.get("precision") == "fp32" and c.get("latency_ms")]
    base = doc.get("baseline") or {}
    for b, lat in (chosen.get("latency_ms") or {}).items():
        ref = [(c["name"], c["latency_ms"][b]["p50"]) for c in fp32 if b in c["latency_ms"]]
        if base.get("latency_ms", {}).get(b):
            ref.append(("baseline", base["latency_ms"][b]["p50"]))
        best = min(ref, key=lambda t: t[1]) if ref else None
        r = (chosen.get("ratio") or {}).get(b) or {}
        out[f"batch{b}"] = {"chosen_ms": round(lat["p50"], 3), "chosen_ci": lat.get("ci"),
                            "vs_baseline": r.get("speedup"), "vs_baseline_ci": [r.get("lo"), r.get("hi")],
                            "verdict": r.get("verdict"), "best_fp32": best[0] if best else None,
                            "best_fp32_ms": round(best[1], 3) if best else None,
                            "vs_best_fp32": round(best[1] / lat["p50"], 3) if best else None}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="strided_detector,resnet18,mobilenet_v3")
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--photos", type=int, default=96)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wild_int8.json"))
    ap.add_argument("--work", default="")
    a = ap.parse_args()
    from tests import foreign, wild

    work = Path(a.work or f"/tmp/slimforge-int8-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    photos = work / "photos"
    if not photos.exists():
        foreign.calibration_images(photos, n=a.photos, size=256)
    makers = {"strided_detector": wild.strided_detector, "resnet18": wild.resnet18, "mobilenet_v3": wild.mobilenet_v3}
    rows = {}
    for name in a.models.split(","):
        model = work / f"{name}.onnx"
        if not model.exists():
            makers[name](model)
        out = work / f"opt-{name}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "slimforge", "optimize", str(model), "--target", "cpu", "--data",
                            str(photos), "--time-budget", a.budget, "-o", str(out), "--force"], env=env,
                           capture_output=True, text=True)
        row = {"exit": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
               "traceback": "Traceback (most recent call last)" in p.stdout + p.stderr}
        if (out / "report.json").exists():
            row.update(summarise(json.loads((out / "report.json").read_text())))
        else:
            row["tail"] = (p.stdout + p.stderr).strip().splitlines()[-5:]
        rows[name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    doc = {"machine": os.uname().nodename, "cpu": _cpu(), "photos": a.photos, "models": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(f"written {a.out}")
    return 0


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
