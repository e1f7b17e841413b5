"""Digits CNN: prune -> distil -> INT8, each stage measured side by side in one run.

Trains the teacher here on scikit-learn's digits, prunes channels (structured, with fine-tuning), distils the teacher
back into the pruned network, then quantizes to INT8 for ONNX Runtime and OpenVINO. Latency at batch 64 is timed
for every stage, interleaved in rounds, against PyTorch FP32 eager; accuracy is on the held-out test split.

    .venv/bin/python benchmarks/digits_chain.py [--ratio 0.5] [--out slimforge-out/digits_chain.json]

Goal (pruning/distillation issue): >= 5x faster than FP32 eager at batch 64, losing at most 1 point of accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import slimforge  # noqa: E402
from slimforge.bench.timing import Timing  # noqa: E402
from slimforge.env import environment  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.digits import train_digits_cnn  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("slimforge-out/digits_chain.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slimforge-chain-"))
    torch.set_num_threads(torch.get_num_threads())

    model, d = train_digits_cnn()
    np.savez(work / "train.npz", input=d["x_train"], labels=d["y_train"])
    np.savez(work / "test.npz", input=d["x_test"], labels=d["y_test"])
    np.savez(work / "calib.npz", input=d["x_train"][:256], labels=d["y_train"][:256])
    fp32 = slimforge.load(model, example_inputs=torch.from_numpy(d["x_test"][:2]), name="digits-cnn")

    stages: dict[str, tuple[slimforge.Artifact, str]] = {"FP32 (PyTorch eager)": (fp32, "torch")}
    t0 = time.perf_counter()
    pruned = slimforge.prune(fp32, ratio=args.ratio, iterative_steps=2, finetune_epochs=3,
                             finetune_data=work / "train.npz", check_speed=False, workdir=work)
    stages["pruned (PyTorch eager)"] = (pruned, "torch")
    distilled = slimforge.distill(fp32, pruned, data=work / "train.npz", epochs=20, lr=5e-4, alpha=0.7,
                                  check_speed=False, workdir=work)
    stages["pruned+distilled (PyTorch eager)"] = (distilled, "torch")
    onnx_art = slimforge.export(distilled, work / "distilled.onnx", workdir=work)
    stages["pruned+distilled FP32 (ONNX Runtime)"] = (onnx_art, "onnxruntime")
    for runtime in ("onnxruntime", "openvino"):
        q = slimforge.quantize(onnx_art, "static", runtime=runtime, data=work / "calib.npz", workdir=work,
                               check_speed=False)
        stages[f"pruned+distilled INT8 ({runtime})"] = (q, runtime)
    print(f"chain built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    x64 = {"input": d["x_test"][:64]}
    sessions = {name: slimforge.open_session(a, rt) for name, (a, rt) in stages.items()}
    samples: dict[str, list[float]] = {name: [] for name in stages}
    for s in sessions.values():
        for _ in range(5):
            s.run(x64)
    for _ in range(args.rounds):
        for name, s in sessions.items():
            for _ in range(20):
                t = time.perf_counter()
                s.run(x64)
                samples[name].append(time.perf_counter() - t)

    base_acc = None
    rows = []
    base_p50 = Timing.from_samples(samples["FP32 (PyTorch eager)"]).p50
    for name, (a, rt) in stages.items():
        acc = slimforge.evaluate(a, work / "test.npz", runtime=rt, limit=None)["accuracy"].value
        base_acc = acc if base_acc is None else base_acc
        t = Timing.from_samples(samples[name])
        params = a.meta.get("parameters_after") or sum(p.numel() for p in fp32.handle.parameters())
        rows.append({"stage": name, "p50_ms_b64": t.p50, "p95_ms_b64": t.p95, "speedup": base_p50 / t.p50,
                     "accuracy": acc, "accuracy_drop": base_acc - acc, "parameters": params,
                     "size_mb": a.size_bytes() / 1e6})
    print(f"{'stage':42s} {'p50 ms':>8s} {'p95 ms':>8s} {'speedup':>8s} {'acc %':>7s} {'drop':>6s} {'params':>8s}")
    for r in rows:
        print(f"{r['stage']:42s} {r['p50_ms_b64']:8.3f} {r['p95_ms_b64']:8.3f} {r['speedup']:7.2f}x "
              f"{r['accuracy']:7.2f} {r['accuracy_drop']:6.2f} {r['parameters']:8,}")
    flops = (pruned.meta.get("flops_before"), pruned.meta.get("flops_after"))
    print(f"FLOPs (2-image batch): {flops[0]:,} -> {flops[1]:,}")
    finals = [r for r in rows if "INT8" in r["stage"]]
    best = max(finals, key=lambda r: r["speedup"])
    ok = best["speedup"] >= 5.0 and best["accuracy_drop"] <= 1.0
    print(("PASS" if ok else "FAIL") + f": {best['stage']} is {best['speedup']:.2f}x faster than FP32 eager at "
          f"batch 64, accuracy {best['accuracy']:.2f}% ({best['accuracy_drop']:+.2f} points lost)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "rows": rows, "flops": flops,
                                    "distill_curve": distilled.meta["distill"]["curve"]}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
