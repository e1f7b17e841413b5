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


class FeedForwardStack(torch.nn.Module):
    """Transformer feed-forward blocks (pre-norm, residual): where an encoder spends most of its FLOPs."""

    def __init__(self, d: int = 2048, layers: int = 6) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, 4 * d), torch.nn.GELU(),
                                torch.nn.Linear(4 * d, d)) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def encoder(d: int = 2048, layers: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    return FeedForwardStack(d, layers).eval()


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
    art = slimforge.load(model, example_inputs=torch.randn(2, 16, 2048), name="ffn-2048x6")
    x = np.random.default_rng(0).standard_normal((args.batch, args.seq, 2048)).astype(np.float32)
    name = art.io.input_names[0]

    cpu = slimforge.open_session(art, "torch").run({name: x[:2]})[0]
    gpu = slimforge.open_session(art, "torch", device="cuda").run({name: x[:2]})[0]
    cuda_err = float(np.abs(cpu - gpu).max() / np.abs(cpu).max())  # relative: GPUs may use TF32 for FP32

    q = slimforge.quantize(art, "fp8", runtime="torch", check_speed=False, workdir="/tmp/slimforge-fp8")
    fid = next(c for c in q.checks if c.name == "quant_fidelity")
    spec = BenchSpec(warmup=5, repeats=30, min_time_s=1.0)
    feeds = {name: x}
    results = {}
    variants = [(f"{p or 'fp32'} {rt}", a, p, rt) for rt in ("torch", "torch_compile")
                for p, a in ((None, art), ("bf16", art), ("fp8", q))]
    for label, a, precision, rt in variants:
        sess = slimforge.open_session(a, rt, device="cuda", precision=None if precision == "fp8" else precision)
        t = slimforge.bench.timing.time_session(sess, feeds, spec)
        out = sess.run(feeds)[0]
        results[label] = {"p50_ms": t.p50, "p95_ms": t.p95, "n": t.n}
        if not label.startswith("fp32"):
            ref = slimforge.open_session(art, "torch", device="cuda").run(feeds)[0]
            results[label]["cosine_vs_fp32"] = float(cosine_similarity(ref.reshape(len(ref), -1),
                                                                       out.reshape(len(out), -1)).mean())
        sess.close()
    report = {"environment": environment(), "cuda_vs_cpu_max_rel": cuda_err,
              "float32_matmul_precision": torch.get_float32_matmul_precision(),
              "fp8_check": fid.to_dict(), "batch": args.batch, "seq": args.seq, "results": results,
              "speedups": {rt: {"fp8_vs_bf16": results[f"bf16 {rt}"]["p50_ms"] / results[f"fp8 {rt}"]["p50_ms"],
                                "fp8_vs_fp32": results[f"fp32 {rt}"]["p50_ms"] / results[f"fp8 {rt}"]["p50_ms"]}
                           for rt in ("torch", "torch_compile")}}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0 if fid.passed and cuda_err < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
