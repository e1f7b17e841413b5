"""Roofline figures on every benchmark row: FLOPs per item counted as FlopCounterMode counts them, on torch, ONNX
and OpenVINO alike, and achieved GFLOP/s with the fraction of the device's peak."""

import numpy as np
import pytest
import torch

import slimforge
from slimforge.bench.flops import flops_per_item
from slimforge.bench.peaks import cpu_peaks, gpu_peaks
from slimforge.report.render import rows


def test_flops_per_item_agree_across_formats(digits, tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    x = digits["data"]["x_test"][:4]
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        digits["module"].eval()(torch.from_numpy(x))
    want = fc.get_total_flops() / 4
    feeds = {digits["onnx"].io.input_names[0]: x}
    assert flops_per_item(digits["torch"], feeds) == pytest.approx(want)
    assert flops_per_item(digits["onnx"], feeds) == pytest.approx(want)
    assert flops_per_item(digits["onnx"], {k: v[:1] for k, v in feeds.items()}) == pytest.approx(want)
    ir = slimforge.load(digits["onnx"].path)
    from slimforge.convert.openvino import OpenVinoConvertConfig
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe

    ov = run_steps(ir, Recipe(steps=(OpenVinoConvertConfig(),), runtime="openvino"),
                   slimforge.RunContext(workdir=tmp_path))
    assert flops_per_item(ov, feeds) == pytest.approx(want)


def test_benchmark_rows_carry_achieved_gflops_and_peak_fraction(digits):
    res = slimforge.benchmark(digits["onnx"], batch_sizes=(1, 32),
                              spec=slimforge.BenchSpec(repeats=5, min_time_s=0.05, rounds=2))
    r = res[0]
    assert r.flops_per_item and r.peak_gflops and r.peak_gflops > 10
    for b in (1, 32):
        assert r.achieved_gflops(b) == pytest.approx(r.flops_per_item * b / r.latency_ms[b].p50 / 1e6)
    from slimforge.api import benchmark_report

    report = benchmark_report(res, [digits["onnx"]])
    for row in rows(report):
        assert row["achieved_gflops"] == pytest.approx(r.achieved_gflops(row["batch"]), rel=1e-6)
        assert 0 < row["peak_fraction"] < 1  # a CPU never beats its own peak


def test_peaks():
    p = cpu_peaks(cores=4, ghz=3.0, flags=("avx512f", "avx512_vnni", "avx512_bf16"))
    assert p["gflops"] == {"fp32": 4 * 3.0 * 64, "bf16": 4 * 3.0 * 128, "int8": 4 * 3.0 * 256}
    assert cpu_peaks(cores=1, ghz=2.0, flags=("amx_int8", "avx512f"))["gflops"]["int8"] == 2.0 * 2048
    h = gpu_peaks("NVIDIA H200")
    assert h["gflops"]["bf16"] == 989_000 and h["bandwidth_gbs"] == 4800
    assert gpu_peaks("Some Future GPU")["gflops"] == {}
    assert np.isfinite(p["gflops"]["fp32"])


def test_flops_never_partial_and_never_touch_the_users_module(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()  # the user's, training
    before = net[1].running_mean.clone(), int(net[1].num_batches_tracked)
    art = slimforge.load(net, example_inputs={"x": torch.randn(2, 3, 8, 8)})
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert flops_per_item(art, x) == pytest.approx(2 * 4 * 6 * 6 * 27)
    assert torch.equal(net[1].running_mean, before[0]) and int(net[1].num_batches_tracked) == before[1]
    assert net.training
    up = slimforge.load(torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 4, 3)).eval(),
                        example_inputs={"x": torch.randn(1, 3, 8, 8)})
    onnx_up = slimforge.export(up, tmp_path / "up.onnx", workdir=tmp_path)
    assert flops_per_item(onnx_up, {onnx_up.io.input_names[0]: x["x"]}) is None  # no formula: no partial figure
    assert flops_per_item(art, {}) is None or flops_per_item(art, {}) >= 0  # odd feeds: no crash


def test_gpu_names_match_whole_words():
    assert gpu_peaks("NVIDIA L40")["source"] == "datasheet of the L40"
    assert gpu_peaks("NVIDIA L4")["source"] == "datasheet of the L4"
    assert gpu_peaks("NVIDIA L40S")["gflops"]["fp8"] == 733_000
