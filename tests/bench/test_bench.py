import numpy as np
import pytest

import slimforge
from slimforge.bench.memory import peak_memory_mb
from slimforge.bench import BenchSpec, Timing, measure


def test_timing_percentiles():
    t = Timing.from_samples([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert t.n == 100
    assert t.p50 == pytest.approx(50.5)
    assert t.p95 == pytest.approx(95.05)
    assert t.p99 == pytest.approx(99.01)
    assert t.mean == pytest.approx(50.5)
    assert t.min == pytest.approx(1.0)


def test_measure_batches_and_throughput(mlp_onnx):
    art = slimforge.load(mlp_onnx)
    spec = BenchSpec(warmup=1, repeats=7, min_time_s=0, max_rounds=8)
    r = measure(art, "onnxruntime", lambda b: {"input": np.ones((b, 16), np.float32)}, batch_sizes=(1, 8),
                spec=spec, threads=1, measure_memory=False)
    assert set(r.latency_ms) == {1, 8}
    assert all(t.n >= 7 for t in r.latency_ms.values())
    assert r.throughput[8] == pytest.approx(8 / (r.latency_ms[8].p50 / 1000))
    assert r.threads == 1 and r.size_mb > 0


def test_peak_memory_in_fresh_process_grows_with_the_model(tmp_path):
    import torch

    small = slimforge.export(slimforge.load(torch.nn.Linear(64, 64), example_inputs=torch.randn(1, 64)),
                             tmp_path / "small.onnx", workdir=tmp_path)
    big = slimforge.export(slimforge.load(torch.nn.Linear(4096, 4096), example_inputs=torch.randn(1, 4096)),
                           tmp_path / "big.onnx", workdir=tmp_path)  # 67 MB of weights
    s_mb, method = peak_memory_mb(small, "onnxruntime", {"input": np.ones((1, 64), np.float32)})
    b_mb, _ = peak_memory_mb(big, "onnxruntime", {"input": np.ones((1, 4096), np.float32)})
    assert method == "subprocess"
    assert b_mb > 60 > s_mb, (s_mb, b_mb)


def test_benchmark_api_several_models(mlp_art, mlp_onnx):
    spec = BenchSpec(warmup=1, repeats=3, min_time_s=0, rounds=3, max_rounds=4)
    results = slimforge.benchmark([mlp_art, mlp_onnx], batch_sizes=(2,), spec=spec)
    assert [r.runtime for r in results] == ["torch", "onnxruntime"]
    assert all(r.latency_ms[2].p50 > 0 for r in results)
    assert results[1].memory_method == "subprocess"
