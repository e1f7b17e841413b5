"""CPU vs GPU with prices: the CPU rows are measured with their cost per 1,000 inferences; a GPU this machine lacks
is named as not measured, never estimated; bad prices are one clear line and exit 2."""

import csv
import subprocess
import sys

import pytest
import torch

import slimforge
from slimforge.bench.cost import cost_per_1000, parse_prices


def test_cost_rows_and_files(tmp_path):
    art = slimforge.load(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval(),
                         example_inputs=torch.randn(1, 64))
    rows = slimforge.benchmark_devices(art, prices={"cpu": 0.2, "cuda": 3.5}, batch_sizes=(1, 16),
                                       spec=slimforge.BenchSpec(repeats=5, min_time_s=0.05, rounds=2),
                                       output_dir=tmp_path / "cost")
    cpu = [r for r in rows if r.device == "cpu"]
    assert [r.batch for r in cpu] == [1, 16] and all(r.measured for r in cpu)
    for r in cpu:
        assert r.items_s == pytest.approx(r.batch / r.p50_ms * 1000.0)
        assert r.cost_per_1000 == pytest.approx(0.2 / 3600 / r.items_s * 1000)
        assert r.p50_ms <= r.p95_ms <= r.p99_ms and r.speedup_vs_cpu == pytest.approx(1.0)
    gpu = [r for r in rows if r.device == "cuda"]
    if not torch.cuda.is_available():
        assert len(gpu) == 2 and not any(r.measured for r in gpu) and all("no CUDA GPU" in r.reason for r in gpu)
        assert all(r.cost_per_1000 is None and r.p50_ms is None for r in gpu)
    table = list(csv.DictReader((tmp_path / "cost" / "benchmark_cpu_gpu.csv").open()))
    assert [(t["device"], t["batch"], t["measured"]) for t in table][:2] == [("cpu", "1", "True"),
                                                                              ("cpu", "16", "True")]
    assert (tmp_path / "cost" / "benchmark_cpu_gpu.png").read_bytes()[:4] == b"\x89PNG"


def test_cost_formula_and_prices():
    assert cost_per_1000(3.5, 7000.0) == pytest.approx(3.5 / 3600 / 7)
    assert parse_prices(["cpu=0.20", "cuda=3.50"]) == {"cpu": 0.2, "cuda": 3.5}
    for bad in ("cpu", "gpu=1", "cpu=-1", "cpu=abc"):
        with pytest.raises(slimforge.ConfigError, match="DEVICE=DOLLARS_PER_HOUR"):
            parse_prices([bad])


def test_cost_cli_refuses_a_bad_price_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slimforge", "benchmark", "--device", "cpu,cuda", "--price",
                           "cuda", "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--price 'cuda'" in proc.stderr
    assert not (tmp_path / "o").exists()
