"""Every quantization method x runtime on the real all-MiniLM-L6-v2, measured side by side in one run.

Prints a table: latency p50/p95 at batch 1 and 32, size, and fidelity to PyTorch FP32 (embedding cosine and top-10
neighbour agreement on held-out sentences). Calibration uses the first 256 bundled sentences; quality is measured
on sentences 500-999. Timing is interleaved: every variant runs a few times per round, for several rounds.

    .venv/bin/python benchmarks/quantize_minilm.py [--rounds 6] [--out slimforge-out/quantize_minilm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

import slimforge  # noqa: E402
from slimforge.bench.timing import Timing  # noqa: E402
from slimforge.env import environment  # noqa: E402
from slimforge.evaluation.metrics import fidelity_metrics, neighbour_agreement  # noqa: E402
from slimforge.io.data import TextLines, bundled_sentences_path  # noqa: E402
from slimforge.io.models import default_model_path  # noqa: E402

VARIANTS = [  # (label, method or None for FP32, runtime)
    ("FP32", None, "torch"),
    ("dynamic INT8", "dynamic", "torch"),
    ("BF16", "bf16", "torch"),
    ("FP32", None, "onnxruntime"),
    ("dynamic INT8", "dynamic", "onnxruntime"),
    ("static INT8 (minmax)", "static", "onnxruntime"),
    ("FP16", "fp16", "onnxruntime"),
    ("INT4 weights", "int4", "onnxruntime"),
    ("FP32", None, "openvino"),
    ("static INT8 (NNCF)", "static", "openvino"),
    ("BF16", "bf16", "openvino"),
    ("INT8 weights", "int8-weight", "openvino"),
    ("INT4 weights", "int4", "openvino"),
]


def subset_file(lines: list[str], path: Path) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs-per-round", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("slimforge-out/bench-quantize"))
    ap.add_argument("--out", type=Path, default=Path("slimforge-out/quantize_minilm.json"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    sentences = bundled_sentences_path().read_text(encoding="utf-8").splitlines()
    calib = subset_file(sentences[:256], args.workdir / "calibration.txt")
    heldout = subset_file(sentences[500:1000], args.workdir / "heldout.txt")
    base = slimforge.load(default_model_path())
    fp32_onnx = slimforge.export(base, args.workdir / "fp32.onnx", workdir=args.workdir)

    arts: dict[str, slimforge.Artifact] = {}
    for label, method, runtime in VARIANTS:
        name = f"{label} / {runtime}"
        t0 = time.perf_counter()
        if method is None:
            arts[name] = base if runtime == "torch" else fp32_onnx
        else:
            src = base if runtime == "torch" else fp32_onnx
            arts[name] = slimforge.quantize(src, method, runtime=runtime, data=calib, num_samples=256,
                                            workdir=args.workdir, check_speed=False, min_cosine=0.9)
        print(f"prepared {name:40s} in {time.perf_counter() - t0:5.1f} s", file=sys.stderr)

    ds = TextLines(heldout, base)
    batches = {1: next(ds.batches(1)).feeds, 32: next(ds.batches(32)).feeds}
    eval_batches = [b.feeds for b in ds.batches(32)]
    runtimes = {f"{label} / {rt}": rt for label, _, rt in VARIANTS}
    sessions = {n: slimforge.open_session(a, runtimes[n]) for n, a in arts.items()}

    outputs = {n: np.concatenate([s.run(f)[0] for f in eval_batches]) for n, s in sessions.items()}
    ref = outputs["FP32 / torch"]
    samples: dict[tuple[str, int], list[float]] = {(n, b): [] for n in sessions for b in batches}
    for n, s in sessions.items():  # warm-up
        for f in batches.values():
            s.run(f)
    for _ in range(args.rounds):
        for n, s in sessions.items():
            for b, f in batches.items():
                for _ in range(args.runs_per_round):
                    t0 = time.perf_counter()
                    s.run(f)
                    samples[(n, b)].append(time.perf_counter() - t0)

    rows = []
    base32 = Timing.from_samples(samples[("FP32 / torch", 32)]).p50
    for n, a in arts.items():
        t1, t32 = Timing.from_samples(samples[(n, 1)]), Timing.from_samples(samples[(n, 32)])
        fid = fidelity_metrics([ref], [outputs[n]])
        rows.append({"variant": n, "precision": a.meta.get("precision", "fp32"),
                     "p50_ms_b1": t1.p50, "p95_ms_b1": t1.p95, "p50_ms_b32": t32.p50, "p95_ms_b32": t32.p95,
                     "speedup_b32_vs_torch_fp32": base32 / t32.p50, "size_mb": a.size_bytes() / 1e6,
                     "cosine": fid["cosine"], "top10_agreement": neighbour_agreement(ref, outputs[n], 10)})

    head = f"{'variant':34s} {'b1 p50':>8s} {'b32 p50':>8s} {'b32 p95':>8s} {'x FP32':>7s} {'MB':>6s} {'cosine':>8s} {'top10':>6s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['variant']:34s} {r['p50_ms_b1']:8.2f} {r['p50_ms_b32']:8.1f} {r['p95_ms_b32']:8.1f} "
              f"{r['speedup_b32_vs_torch_fp32']:6.2f}x {r['size_mb']:6.1f} {r['cosine']:8.4f} {r['top10_agreement']:6.3f}")
    good = [r for r in rows if "int8" in r["precision"] and r["cosine"] >= 0.995
            and r["speedup_b32_vs_torch_fp32"] >= 1.8]
    print()
    if good:
        best = max(good, key=lambda r: r["speedup_b32_vs_torch_fp32"])
        print(f"PASS: {best['variant']} is INT8 with cosine {best['cosine']:.4f} >= 0.995 and "
              f"{best['speedup_b32_vs_torch_fp32']:.2f}x >= 1.8x faster than PyTorch FP32 eager at batch 32")
    else:
        print("FAIL: no INT8 variant reached cosine >= 0.995 and >= 1.8x at batch 32")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(),
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
