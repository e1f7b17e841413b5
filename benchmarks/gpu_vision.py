"""GPU target benchmark: ViT-B/16 and ResNet-50 (timm configs, random weights: no hub), and a large-GEMM MLP.

In one process per model: FP32 eager, bf16 eager, fp16 eager, bf16 + compile (what a user tries by hand) and
slimforge's choice (``optimize --target gpu``, loaded back from its engine file), timed side by side in interleaved
rounds at batch 1, 32 and 256 with inputs on the device. Prints ms, images/s, MFU and cosine to FP32; writes
``benchmarks/results/gpu_vision.json``. Also: FP8 against bf16 on a 4096x4096 MLP at 4096 rows, and the engine loaded
in a fresh process (cosine to the in-memory winner).

    python benchmarks/gpu_vision.py [--models vit,resnet,mlp] [--out DIR] [--budget S] [--serve]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import slimforge
from slimforge.bench.compare import compare
from slimforge.bench.timing import BenchSpec

PEAK_TFLOPS = 989.0  # H100/H200 dense bf16
BATCHES = (1, 32, 256)
SPEC = BenchSpec(warmup=3, repeats=20, min_time_s=0.3, max_time_s=30.0, rounds=5, max_rounds=8, rel_ci=0.03)


T0 = time.perf_counter()


def say(*what) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s]", *what, flush=True)


class Manual:
    """A hand-written variant, timed through the same loop as slimforge's sessions (inputs on the device)."""

    def __init__(self, fn, dtype: torch.dtype | None, channels_last: bool = False) -> None:
        self.fn, self.dtype, self.cl = fn, dtype, channels_last
        self.input_names = ["x"]

    def prepare(self, feeds):
        x = torch.from_numpy(feeds["x"]).cuda()
        x = x.to(self.dtype) if self.dtype is not None else x
        return [x.contiguous(memory_format=torch.channels_last) if self.cl else x]

    def run_tensors(self, xs):
        from slimforge.torch_utils import fp32_precision

        with torch.inference_mode(), fp32_precision(False):  # FP32 means IEEE FP32 (cuDNN defaults to TF32)
            return [self.fn(*xs)]

    def run(self, feeds):
        return [o.float().cpu().numpy() for o in self.run_tensors(self.prepare(feeds))]

    def sync(self):
        torch.cuda.synchronize()

    def close(self):
        pass


def flops_per_image(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 224, 224, device="cuda")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return float(fc.get_total_flops())


_SEEN: set[tuple[str, float]] = set()


def _progress(ev) -> None:
    """Each new step of the search, its baseline and its runoff, once."""
    if ev.task.startswith(("search", "baseline", "runoff")) and (ev.task, ev.completed) not in _SEEN:
        _SEEN.add((ev.task, ev.completed))
        say("  ", ev.task, ev.completed, "/", ev.total)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def vision(name: str, out: Path, budget: float) -> dict:
    import copy

    import timm

    torch.manual_seed(0)
    arch = {"vit": "vit_base_patch16_224", "resnet": "resnet50"}[name]
    model = timm.create_model(arch, pretrained=False).eval()
    flops = flops_per_image(copy.deepcopy(model).cuda())
    art = slimforge.load(model, example_inputs={"x": torch.randn(1, 3, 224, 224)})
    t0 = time.perf_counter()
    say(name, "search starts")
    # random weights: the 1000-way head's top-1 is a near-tie on most inputs, so quality is the cosine >= 0.995
    res = slimforge.auto_optimize(art, target="gpu", goals={"min_cosine": 0.995}, output_dir=out / f"{name}-gpu",
                                  time_budget_s=budget, use_cache=False, force=True, progress=_progress)
    search_s = time.perf_counter() - t0
    say(name, f"search done in {search_s:.0f} s: {res.report.get('chosen')} -> {res.paths.get('artifact')}")
    engine = res.paths.get("artifact")
    chosen = res.report.get("chosen")
    rows = [(r["name"], r["status"], (r.get("reason") or "")[:160]) for r in res.report["candidates"]]
    for r in rows:
        print(f"  {name} candidate: {r[0]:<58} {r[1]:<9} {r[2]}")
    cuda_fp32 = copy.deepcopy(model).cuda()
    bf16 = copy.deepcopy(model).cuda().to(torch.bfloat16)
    fp16 = copy.deepcopy(model).cuda().to(torch.float16)
    compiled = torch.compile(copy.deepcopy(model).cuda().to(torch.bfloat16))
    sessions = {"fp32 eager": Manual(cuda_fp32, None), "bf16 eager": Manual(bf16, torch.bfloat16),
                "fp16 eager": Manual(fp16, torch.float16), "bf16 + compile": Manual(compiled, torch.bfloat16)}
    if name == "resnet":
        manual = torch.compile(copy.deepcopy(model).cuda().half().to(memory_format=torch.channels_last),
                               mode="reduce-overhead")
        sessions["fp16 + compile + graphs + channels_last (manual)"] = Manual(
            lambda x: manual(x).clone(), torch.float16, channels_last=True)
    from slimforge.runtimes import open_session

    sessions[f"slimforge: {chosen}"] = open_session(res.artifact)
    feeds = {b: {"x": np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)}
             for b in BATCHES}
    ref = {b: sessions["fp32 eager"].run(feeds[b])[0] for b in BATCHES}
    cos = {n: min(cosine(ref[b], s.run(feeds[b])[0]) for b in BATCHES) for n, s in sessions.items()}
    say(name, "timing side by side")
    comp = compare(sessions, feeds, SPEC, reference="fp32 eager")
    say(name, "timed")
    table = {}
    for n in sessions:
        table[n] = {}
        for b in BATCHES:
            t = comp.timing(n, b)
            table[n][b] = {"ms": t.p50, "ci": [t.lo, t.hi], "images_s": b / t.p50 * 1000.0,
                           "mfu": flops * b / (t.p50 / 1000.0) / (PEAK_TFLOPS * 1e12),
                           "vs_fp32": comp.ratio(n, b).to_dict() if n != "fp32 eager" else None}
        table[n]["cosine_to_fp32"] = cos[n]
    fresh = engine_in_fresh_process(engine, res.report, art, out) if engine and engine.suffix == ".pt2" else None
    return {"model": arch, "gflops_per_image": flops / 1e9, "search_seconds": search_s, "chosen": chosen,
            "per_batch_best": res.report.get("per_batch_best"),
            "engine": str(engine) if engine else None, "candidates": rows, "table": table,
            "goals_met": res.goals_met, "notes": res.report.get("notes"), "engine_fresh_process": fresh,
            "timing": comp.note()}


def vit_engine(out: Path) -> dict:
    """The ViT winner of a search (``fp16 + compile + CUDA graphs``, session 11 call 1) rebuilt from its recipe
    without the search: written as an engine, loaded in a fresh process, timed beside FP32 and bf16 eager."""
    import copy

    import timm

    from slimforge.core.context import RunContext
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe
    from slimforge.runtimes import open_session
    from slimforge.techniques.gpu import GpuConfig

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    flops = flops_per_image(copy.deepcopy(model).cuda())
    art = slimforge.load(model, example_inputs={"x": torch.randn(1, 3, 224, 224)})
    steps = (GpuConfig(dtype="fp16", compile="reduce-overhead", min_cosine=0.0),)
    winner = run_steps(art, Recipe(steps=steps, runtime="torch"), RunContext())
    engine = out / "vit-engine" / "vit.pt2"
    engine.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    loaded = slimforge.save(winner, engine)  # the engine and its sidecar, loaded back and checked
    say(f"engine written in {time.perf_counter() - t:.0f} s: {engine.stat().st_size / 1e6:.0f} MB, "
        f"{type(loaded.handle).__name__}")
    fresh = engine_in_fresh_process(engine, {}, art, out, winner=winner)
    say("fresh process:", fresh)
    sessions = {"fp32 eager": Manual(copy.deepcopy(model).cuda(), None), "slimforge engine (.pt2)": open_session(loaded)}
    feeds = {b: {"x": np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)}
             for b in BATCHES}
    ref = {b: sessions["fp32 eager"].run(feeds[b])[0] for b in BATCHES}
    cos = {n: min(cosine(ref[b], s.run(feeds[b])[0]) for b in BATCHES) for n, s in sessions.items()}
    say("engine cosine to FP32:", cos)
    comp = compare(sessions, feeds, BenchSpec(warmup=2, repeats=5, min_time_s=0.1, max_time_s=3.0, rounds=2,
                                              max_rounds=2, rel_ci=0.1), reference="fp32 eager")
    table = {n: {**{b: {"ms": comp.timing(n, b).p50, "ci": [comp.timing(n, b).lo, comp.timing(n, b).hi],
                        "mfu": flops * b / (comp.timing(n, b).p50 / 1000.0) / (PEAK_TFLOPS * 1e12)} for b in BATCHES},
                 "cosine_to_fp32": cos[n]} for n in sessions}
    captured = len(getattr(loaded.handle, "_captured", {}))
    return {"engine": str(engine), "engine_mb": engine.stat().st_size / 1e6, "engine_fresh_process": fresh,
            "table": table, "engine_graphs_on": bool(loaded.handle.graphs), "engine_shapes_captured": captured,
            "timing": comp.note()}


def serve_and_load(engine: Path, out: Path, port: int = 8765) -> dict:
    """``slimforge serve`` on the engine, then ``slimforge loadtest --concurrency 64``: without dynamic batching
    (--max-batch 1) and with it (--max-batch 32), one after the other."""
    import urllib.request

    result = {}
    for max_batch in (1, 32):
        log = out / f"server-{max_batch}.log"
        out.mkdir(parents=True, exist_ok=True)
        # (image decoding runs on the host in the preprocessing threads: half the cores by default, 2 to 8; at a
        # fixed 2 the H200 server topped out at ~240 req/s whatever the batching, session 15)
        server = subprocess.Popen([sys.executable, "-m", "slimforge", "serve", str(engine), "--port", str(port),
                                   "--max-batch", str(max_batch), "--max-wait-ms", "4"],
                                  stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)
        try:
            t = time.perf_counter()
            while time.perf_counter() - t < 240:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(1)
            ready_s = time.perf_counter() - t
            say(f"serving (max batch {max_batch}) ready in {ready_s:.0f} s; load test at concurrency 64")
            dest = out / f"max-batch-{max_batch}"
            proc = subprocess.run([sys.executable, "-m", "slimforge", "loadtest", f"http://127.0.0.1:{port}",
                                   "--concurrency", "64", "--duration", "8s", "-o", str(dest), "--force"],
                                  capture_output=True, text=True, timeout=200)
            doc = json.loads((dest / "loadtest.json").read_text()) if (dest / "loadtest.json").exists() else None
            result[f"max_batch_{max_batch}"] = {"ready_s": ready_s, "rc": proc.returncode, "summary": doc,
                                                "stdout": proc.stdout[-1500:], "stderr": proc.stderr[-800:]}
            server.terminate()
            server.wait(30)
            result[f"max_batch_{max_batch}"]["server_log"] = log.read_text(errors="replace")[-2000:]
            port += 1
        finally:
            server.terminate()
            server.wait(30)
    return result


def engine_in_fresh_process(engine: Path, report: dict, art, out: Path, winner=None) -> dict:
    """The engine loaded by a new Python process (no model code, no compile) against the in-memory winner made by
    re-applying the recipe."""
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe
    from slimforge.core.context import RunContext
    from slimforge.runtimes import open_session

    x = np.random.default_rng(7).standard_normal((8, 3, 224, 224)).astype(np.float32)
    np.save(out / "x.npy", x)
    code = ("import sys, time, numpy as np, slimforge; t=time.perf_counter(); a = slimforge.load(sys.argv[1]); "
            "from slimforge.runtimes import open_session; s = open_session(a); "
            "np.save(sys.argv[3], s.run({a.io.input_names[0]: np.load(sys.argv[2])})[0]); "
            "print(round(time.perf_counter()-t, 2))")
    proc = subprocess.run([sys.executable, "-c", code, str(engine), str(out / "x.npy"), str(out / "y.npy")],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr.strip().splitlines()[-1:]}
    if winner is None:
        recipe = Recipe.from_dict(report["recipe"])
        winner = run_steps(art, Recipe(steps=recipe.steps, runtime="torch"), RunContext())
    mem = open_session(winner).run({"x": x})[0]
    return {"ok": True, "load_and_first_run_s": float(proc.stdout.strip().splitlines()[-1]),
            "cosine_to_in_memory_winner": cosine(mem, np.load(out / "y.npy"))}


def mlp(layers: int = 4, rows: int = 4096, width: int = 4096) -> dict:
    """FP8 (``torch._scaled_mm`` rowwise, eager and compiled; tensorwise and torchao's float8 were measured in session
    10, see the results JSON's history) and
    INT8 (torchao) against bf16 on a plain large-GEMM MLP, with a kernel profile of bf16 and FP8."""
    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, width), torch.nn.GELU()]
    model = torch.nn.Sequential(*blocks).eval()
    x = torch.randn(rows, width)
    art = slimforge.load(model, example_inputs={"x": x[:16]})
    from slimforge.core.context import RunContext
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe
    from slimforge.runtimes import open_session
    from slimforge.techniques.gpu import GpuConfig
    from slimforge.techniques.quantize.torch_fp8 import Fp8Config

    from slimforge.techniques.quantize.torch_int8_gpu import Int8GpuConfig

    compiled = GpuConfig(dtype="keep", compile="default", min_cosine=0.0)
    graphs = GpuConfig(dtype="keep", compile="reduce-overhead", min_cosine=0.0)
    variants = {"bf16 eager": (GpuConfig(dtype="bf16", min_cosine=0.0),),
                "bf16 + compile + CUDA graphs": (GpuConfig(dtype="bf16", compile="reduce-overhead", min_cosine=0.0),),
                "fp8 rowwise": (Fp8Config(min_cosine=0.0),),
                "fp8 rowwise + compile": (Fp8Config(min_cosine=0.0), compiled),
                "fp8 rowwise + compile + CUDA graphs": (Fp8Config(min_cosine=0.0), graphs),
                "int8 dynamic (torchao) + compile": (Int8GpuConfig(min_cosine=0.0), compiled)}
    sessions, errors = {"fp32 eager": open_session(art, "torch", device="cuda")}, {}
    for n, steps in variants.items():
        say("mlp: building", n)
        try:
            sessions[n] = open_session(run_steps(art, Recipe(steps=steps, runtime="torch"), RunContext()))
        except Exception as exc:  # noqa: BLE001 - reported
            errors[n] = str(exc).splitlines()[0][:300]
    feeds = {rows: {"x": x.numpy()}}
    say("mlp: timing", list(sessions), errors)
    ref = sessions["fp32 eager"].run(feeds[rows])[0]
    comp = compare(sessions, feeds, SPEC, reference="fp32 eager")
    flops = 2.0 * rows * width * width * layers
    out = {"layers": layers, "rows": rows, "width": width, "errors": errors, "table": {}}
    for n, s in sessions.items():
        t = comp.timing(n, rows)
        out["table"][n] = {"ms": t.p50, "ci": [t.lo, t.hi], "tflops": flops / (t.p50 / 1000) / 1e12,
                           "cosine_to_fp32": cosine(ref, s.run(feeds[rows])[0])}
    for n in out["table"]:
        if n.startswith(("fp8", "int8")):
            out[f"{n} vs bf16 eager"] = comp.ratio(n, rows, reference="bf16 eager").to_dict()
    try:
        out["profile"] = {n: kernel_profile(sessions[n], feeds[rows]) for n in (
            "bf16 eager", "fp8 rowwise + compile", "fp8 rowwise + compile + CUDA graphs") if n in sessions}
    except Exception as exc:  # noqa: BLE001 - the timings stand without it
        out["profile"] = {"error": str(exc)[:300]}
    return out


def kernel_profile(sess, feeds, n: int = 10) -> list[dict]:
    """Where the GPU time goes (torch.profiler, CUDA kernels, top 8 by total time over ``n`` runs)."""
    from torch.profiler import ProfilerActivity, profile

    from slimforge.bench.compare import compute_call

    call = compute_call(sess, feeds)
    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            call()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:8]
    return [{"kernel": e.key[:120], "calls": e.count, "ms_per_run": e.device_time_total / 1000.0 / n} for e in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,vit,resnet")
    ap.add_argument("--out", default="/tmp/slimforge-gpu")
    ap.add_argument("--budget", type=float, default=900.0)
    ap.add_argument("--serve", action="store_true", help="serve the engine and load-test it at concurrency 64")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "gpu_vision.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_vision.py needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": {}}
    path = Path(args.json)
    if path.exists():  # one model per call fits the device tool's limit: keep the others' results
        doc["results"] = json.loads(path.read_text()).get("results", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        t = time.perf_counter()
        try:
            doc["results"][name] = (mlp() if name == "mlp" else vit_engine(out) if name == "vit-engine"
                                    else vision(name, out, args.budget))
            engine = doc["results"][name].get("engine")
            if args.serve and engine:  # written first: the timings stand if serving runs out of time
                path.write_text(json.dumps(doc, indent=2, default=str))
                doc["results"][name]["serving"] = serve_and_load(Path(engine), out / f"{name}-load")
        except Exception as exc:  # noqa: BLE001 - one model's failure is reported, the others still run
            import traceback

            doc["results"][name] = {"error": traceback.format_exc()[-3000:]}
            print(f"{name}: FAILED {exc}")
        doc["results"][name]["seconds"] = time.perf_counter() - t
        path.write_text(json.dumps(doc, indent=2, default=str))
        print(json.dumps(doc["results"][name], indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
