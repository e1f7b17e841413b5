"""FP8 (torchao float8) against BF16 and FP32 on an NVIDIA GPU, measured side by side in one run.

Also checks the spine's CUDA path: the PyTorch runtime on CUDA gives the CPU's numbers. Run on a GPU machine:

    PYTHONPATH=src python3 benchmarks/gpu_fp8.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import slimforge  # noqa: E402
from slimforge.bench.timing import BenchSpec  # noqa: E402
from slimforge.env import environment  # noqa: E402
from slimforge.evaluation.metrics import cosine_similarity  # noqa: E402


def encoder(d: int = 1024, layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=d, nhead=16, dim_feedforward=4 * d, batch_first=True)
    return torch.nn.TransformerEncoder(layer, num_layers=layers).eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    model = encoder()
    art = slimforge.load(model, example_inputs=torch.randn(2, 16, 1024), name="encoder-1024x4")
    x = np.random.default_rng(0).standard_normal((args.batch, args.seq, 1024)).astype(np.float32)
    name = art.io.input_names[0]

    cpu = slimforge.open_session(art, "torch").run({name: x[:2]})[0]
    gpu = slimforge.open_session(art, "torch", device="cuda").run({name: x[:2]})[0]
    cuda_err = float(np.abs(cpu - gpu).max())

    q = slimforge.quantize(art, "fp8", runtime="torch", check_speed=False, workdir="/tmp/slimforge-fp8")
    fid = next(c for c in q.checks if c.name == "quant_fidelity")
    spec = BenchSpec(warmup=5, repeats=30, min_time_s=1.0)
    feeds = {name: x}
    results = {}
    for label, a, precision in (("fp32", art, None), ("bf16", art, "bf16"), ("fp8", q, None)):
        sess = slimforge.open_session(a, "torch", device="cuda", precision=precision)
        t = slimforge.bench.timing.time_session(sess, feeds, spec)
        out = sess.run(feeds)[0]
        results[label] = {"p50_ms": t.p50, "p95_ms": t.p95, "n": t.n}
        results[label]["cosine_vs_fp32_cpu"] = None
        if label != "fp32":
            ref = slimforge.open_session(art, "torch", device="cuda").run(feeds)[0]
            results[label]["cosine_vs_fp32"] = float(cosine_similarity(ref.reshape(len(ref), -1),
                                                                       out.reshape(len(out), -1)).mean())
        sess.close()
    report = {"environment": environment(), "cuda_vs_cpu_max_abs": cuda_err,
              "fp8_check": fid.to_dict(), "batch": args.batch, "seq": args.seq, "results": results,
              "fp8_speedup_vs_bf16": results["bf16"]["p50_ms"] / results["fp8"]["p50_ms"],
              "fp8_speedup_vs_fp32": results["fp32"]["p50_ms"] / results["fp8"]["p50_ms"]}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0 if fid.passed and cuda_err < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
