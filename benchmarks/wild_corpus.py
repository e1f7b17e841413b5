"""Every model of the third-party-style corpus (tests/wild.py) through the CLI as a user runs it, in fresh
processes: ``info``, ``quantize`` with every method that applies, and ``optimize --target cpu`` without and with
data. Counts tracebacks (must be 0), and records per model what optimize handed back (a measured gain or an honest
"no gain"), the task it judged and its task metric.

    python benchmarks/wild_corpus.py [--models a,b] [--budget 90s] [--out benchmarks/results/wild_corpus.json]
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

IMAGE_MODELS = {"strided_detector", "text_detector", "anonymous_classifier", "super_resolution", "recognizer", "cnn",
                "detector", "symbolic", "opset11", "constant_weights"}
METHODS = ("dynamic", "static", "fp16", "bf16", "int8-weight", "int4")


def cli(args: list[str], cwd: Path, timeout: float = 900) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    try:
        p = subprocess.run([sys.executable, "-m", "slimforge", *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=timeout)
        out, code = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        out, code = f"timeout: {exc}", -9
    return {"args": args, "exit": code, "seconds": round(time.perf_counter() - t0, 1),
            "traceback": "Traceback (most recent call last)" in out, "tail": out.strip().splitlines()[-3:]}


def audio_data(path: Path, input_name: str, samples: int) -> Path:
    """Chunks of tones with noise and silence, as ``.npz`` with only the audio input (state and rate are
    synthesised by the loader)."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(samples) / 16000.0
    chunks = []
    for i in range(96):
        f = rng.uniform(100, 3000)
        speech = (i // 8) % 2 == 0
        chunks.append((0.3 * np.sin(2 * np.pi * f * t) if speech else 0) + 0.01 * rng.standard_normal(samples))
    np.savez(path, **{input_name: np.asarray(chunks, np.float32)})
    return path


def data_for(name: str, model: Path, work: Path) -> Path | None:
    from tests import foreign

    if name in IMAGE_MODELS:
        photos = work / "photos"
        if not photos.exists():
            foreign.calibration_images(photos, n=64, size=256)
        return photos
    if name == "vad":
        return audio_data(work / "vad_audio.npz", "input", 512)
    if name == "stateful":
        return audio_data(work / "stateful_audio.npz", "audio", 160)
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="")
    ap.add_argument("--budget", default="90s")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wild_corpus.json"))
    ap.add_argument("--work", default="")
    ap.add_argument("--skip-quantize", action="store_true")
    a = ap.parse_args()
    from tests import wild

    work = Path(a.work or f"/tmp/slimforge-wild-{os.getpid()}")
    files = wild.corpus(work / "models")
    names = [n for n in files if not a.models or n in a.models.split(",")]
    rows = []
    for name in names:
        model, row = files[name], {"model": name, "runs": []}
        data = data_for(name, model, work)
        row["runs"].append(cli(["info", str(model), "--json"], work))
        if not a.skip_quantize:
            for method in METHODS:  # BF16 runs on OpenVINO (ONNX Runtime has no BF16 CPU kernels: it says so)
                suffix, rt = (".xml", ["--runtime", "openvino"]) if method == "bf16" else (".onnx", [])
                q = ["quantize", str(model), "--method", method, "-o", str(work / f"q-{name}-{method}{suffix}"),
                     "--batch", "1", *rt]
                row["runs"].append(cli(q + (["--data", str(data)] if data and method == "static" else []), work))
        for with_data in (False, True):
            if with_data and data is None:
                continue
            out = work / f"opt-{name}-{'data' if with_data else 'nodata'}"
            args = ["optimize", str(model), "--target", "cpu", "--time-budget", a.budget, "-o", str(out)]
            run = cli(args + (["--data", str(data)] if with_data else []), work)
            rep = out / "report.json"
            if rep.exists():
                doc = json.loads(rep.read_text())
                chosen = next((c for c in doc["candidates"] if c["status"] == "chosen"), None)
                notes = " ".join(doc.get("notes", []))
                run["task"] = next((n.split(":")[1].split("(")[0].strip() for n in doc.get("notes", [])
                                    if n.startswith("task:")), None)
                run["chosen"] = chosen["name"] if chosen else None
                run["no_gain"] = "no gain on this target" in notes
                if chosen:
                    run["speedup_b1"] = chosen["ratio"].get("1", {}).get("ratio") if chosen.get("ratio") else None
                    run["quality"] = {k: v for k, v in chosen["quality"].items() if isinstance(v, (int, float))}
            row["runs"].append(run)
        rows.append(row)
        bad = [r for r in row["runs"] if r["traceback"] or r["exit"] not in (0, 2, 3)]
        print(f"{name}: {len(row['runs'])} runs, {len(bad)} bad;",
              "; ".join(f"{r['args'][0]}{' ' + r['args'][3] if r['args'][0] == 'quantize' else ''} exit {r['exit']}"
                        f"{' TRACEBACK' if r['traceback'] else ''}" + (f" -> {r.get('chosen') or 'no gain'}"
                        f" ({r.get('task')})" if r['args'][0] == 'optimize' else '') for r in row["runs"]), flush=True)
    tracebacks = sum(r["traceback"] for row in rows for r in row["runs"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"models": rows, "tracebacks": tracebacks}, indent=1))
    print(f"tracebacks: {tracebacks}; written {a.out}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    raise SystemExit(main())
