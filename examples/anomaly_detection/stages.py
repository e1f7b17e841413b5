"""The slimforge stages of the lab, each through the public API: the variants (PyTorch FP32, PyTorch dynamic INT8,
ONNX Runtime, the auto-optimizer's choice for the CPU), their held-out quality (measured here by running each
artifact), their speed side by side (``slimforge.benchmark``), CPU against GPU with prices
(``slimforge.benchmark_devices``) and a load test of the served model (``slimforge serve`` + ``slimforge loadtest``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slimforge.serve.local import free_port

PRICES = {"cpu": 0.20, "cuda": 3.50}  # $ per hour
INPUT = "image"


@dataclass
class Variant:
    """One deployable form of the model, what it scores on the held-out set, and how fast it runs."""

    key: str
    label: str
    artifact: Any
    runtime: str
    file: Path | None
    quality: dict[str, float] = field(default_factory=dict)
    bench: Any = None  # slimforge BenchResult
    note: str = ""

    @property
    def size_mb(self) -> float:
        """The model file on disk (with its companions: OpenVINO .bin, ONNX external data), else the weights."""
        if self.file is not None and self.file.exists():
            extra = [self.file.with_suffix(".bin"), self.file.with_name(self.file.name + ".data")]
            return sum(f.stat().st_size for f in [self.file, *(e for e in extra if e.exists())]) / 1e6
        return float(self.bench.size_mb) if self.bench is not None else float("nan")


def classification_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, and precision / recall / F1 of the anomaly class (label 1), in percent.

    Example:
        >>> m = classification_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1]))
        >>> m["accuracy"], m["precision"], m["recall"]
        (50.0, 50.0, 50.0)
    """
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * float((pred == y).mean()), "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1, "tp": tp, "fp": fp, "fn": fn,
            "tn": int(((pred == 0) & (y == 0)).sum())}


def held_out_quality(art: Any, runtime: str, x: np.ndarray, y: np.ndarray, *, batch: int = 64) -> dict[str, float]:
    """Run the artifact itself (``slimforge.open_session`` on its runtime) over the held-out set."""
    import slimforge

    sess = slimforge.open_session(art, runtime)
    name = art.io.input_names[0]
    try:
        logits = np.concatenate([np.asarray(sess.run({name: np.ascontiguousarray(x[i:i + batch])})[0])
                                 for i in range(0, len(x), batch)])
    finally:
        sess.close()
    return classification_metrics(logits.argmax(axis=1), y)


def build_variants(net: Any, *, size: int, val_npz: Path, models_dir: Path, auto_dir: Path, spec: Any,
                   auto_budget_s: float, log: Callable[[str], None]) -> tuple[list[Variant], Any]:
    """The four variants; returns them and the auto-optimizer's result."""
    import torch

    import slimforge

    models_dir.mkdir(parents=True, exist_ok=True)
    fp32 = slimforge.load(net.cpu().eval(), example_inputs=torch.rand(1, 3, size, size), input_names=[INPUT],
                          name="anomaly_vit", task="classification")
    fp32_file = slimforge.save(fp32, models_dir / "anomaly_vit_fp32.pt2").path  # the FP32 file, for its size
    log(f"FP32 model saved: {fp32_file.name} ({fp32_file.stat().st_size / 1e6:.2f} MB)")
    int8 = slimforge.quantize(fp32, "dynamic", runtime="torch", data=val_npz, spec=spec,
                              output=models_dir / "anomaly_vit_int8_dynamic.pt")
    log("dynamic INT8 (PyTorch): " + "; ".join(f"{c.name} {'passed' if c.passed else 'FAILED'}" for c in int8.checks))
    onnx = slimforge.export(fp32, models_dir / "anomaly_vit_fp32.onnx")
    log("ONNX export: " + "; ".join(f"{c.name} {'passed' if c.passed else 'FAILED'}" for c in onnx.checks))
    # the seed's goals that are the optimizer's business: -80% latency, < 30 MB, and keep the accuracy (at most one
    # point below FP32 on the validation crops); the model's own accuracy is the training's business
    goals = {"max_latency_ms": "20%", "max_size_mb": 30, "max_accuracy_drop": 1}
    res = slimforge.auto_optimize(fp32, target="cpu", data=val_npz, goals=goals, output_dir=auto_dir,
                                  time_budget_s=auto_budget_s, use_cache=False)
    auto_rt = (res.report.get("recipe") or {}).get("runtime") or "torch"
    steps = ", ".join(s.get("type", s.get("kind", "?")) if isinstance(s, dict) else str(s)
                      for s in (res.report.get("recipe") or {}).get("steps", [])) or "none (no gain found)"
    log(f"auto-optimizer: {Path(res.paths.get('artifact', '')).name} on {auto_rt}, steps: {steps}; its goals "
        f"{'met' if res.goals_met else 'missed: ' + '; '.join(res.missed)}")
    variants = [
        Variant("fp32", "PyTorch FP32 (eager)", fp32, "torch", fp32_file),
        Variant("int8", "PyTorch dynamic INT8", int8, "torch", Path(int8.path)),
        Variant("onnx", "ONNX Runtime FP32", onnx, "onnxruntime", Path(onnx.path)),
        Variant("auto", f"auto-optimized ({auto_rt})", res.artifact, auto_rt,
                Path(res.paths["artifact"]) if res.paths.get("artifact") else None,
                note=f"steps: {steps}"),
    ]
    return variants, res


def measure(variants: list[Variant], *, heldout_npz: Path, batch_sizes: tuple[int, ...], spec: Any) -> None:
    """All variants timed side by side in interleaved rounds on held-out crops (``slimforge.benchmark``)."""
    import slimforge
    from slimforge.runtimes import default_runtime

    # benchmark() takes one runtime for every model: each runs on its format's natural runtime, which must be the
    # runtime the variant was made for
    mismatch = [v.label for v in variants if default_runtime(v.artifact) != v.runtime]
    if mismatch:
        raise RuntimeError(f"benchmark would time {mismatch} on another runtime than the one they were made for")
    results = slimforge.benchmark([v.artifact for v in variants], batch_sizes=batch_sizes, data=heldout_npz,
                                  spec=spec)
    for v, r in zip(variants, results):
        v.bench = r


def cost_per_1000(items_per_s: float, price_per_hour: float = PRICES["cpu"]) -> float:
    """Dollars for 1,000 inferences on a device fully loaded at ``items_per_s``."""
    return price_per_hour / 3600.0 / items_per_s * 1000.0


def device_benchmark(art: Any, *, heldout_npz: Path, out_dir: Path, work_dir: Path, batch_sizes: tuple[int, ...],
                     spec: Any) -> list[dict[str, Any]]:
    """CPU against GPU with prices; the CSV, JSON and PNG are copied into ``out_dir``."""
    import slimforge

    rows = slimforge.benchmark_devices(art, devices=("cpu", "cuda"), prices=PRICES, batch_sizes=batch_sizes,
                                       data=heldout_npz, spec=spec, output_dir=work_dir)
    for suffix in ("csv", "json", "png"):
        src = work_dir / f"benchmark_cpu_gpu.{suffix}"
        if src.exists():
            shutil.copyfile(src, out_dir / src.name)
    return [r.to_dict() for r in rows]


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("slimforge")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "slimforge"]


def load_test(model_file: Path, *, payload: Path, out_dir: Path, log_file: Path, concurrency: int,
              duration_s: float, ready_timeout_s: float = 90.0) -> dict[str, Any]:
    """``slimforge serve`` in a subprocess, ``slimforge loadtest`` against it once ready; the server is always
    stopped. Returns the load test's JSON summary."""
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with open(log_file, "wb") as server_log:
        server = subprocess.Popen([*_cli(), "serve", str(model_file), "--port", str(port), "--max-batch", "16",
                                   "--max-wait-ms", "2"], stdout=server_log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(server, f"http://127.0.0.1:{port}/v2/health/ready", ready_timeout_s, log_file)
            cmd = [*_cli(), "loadtest", f"http://127.0.0.1:{port}", "--concurrency", str(concurrency),
                   "--duration", f"{duration_s:g}s", "--payload", str(payload), "-o", str(out_dir)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration_s + 120)
            if done.returncode != 0:
                raise RuntimeError(f"slimforge loadtest failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return json.loads((out_dir / "loadtest.json").read_text())


def _wait_ready(server: subprocess.Popen, url: str, timeout_s: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"slimforge serve exited ({server.returncode}); see {log_file}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"slimforge serve was not ready within {timeout_s:.0f} s; see {log_file}")


def write_payload(path: Path, x: np.ndarray) -> None:
    """One held-out crop as a KServe-style JSON body for ``/api/predict``."""
    path.write_text(json.dumps({"inputs": {INPUT: np.round(x[None], 4).tolist()}}))
