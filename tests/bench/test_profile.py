"""``slimforge profile``: per-layer self times that add up to the end-to-end latency, FLOPs equal to
FlopCounterMode's total on every runtime, ONNX nodes mapped back to their modules, bottlenecks and both plots."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import slimforge
from slimforge.bench.profile import LayerProfile, ProfileResult, finish
from slimforge.bench.profile_onnx import node_flops, scope_of

RUNTIMES = ("torch", "onnxruntime", "openvino")


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A torch session opened with threads=1 sets torch's process-wide thread count: give it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _flop_counter_total(module: torch.nn.Module, x: np.ndarray | dict, *, cpu_sdpa: bool = True) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from slimforge.bench.profile_torch import flop_counter

    args = [torch.from_numpy(v) for v in (x.values() if isinstance(x, dict) else [x])]
    with (flop_counter() if cpu_sdpa else FlopCounterMode(display=False)) as fc, torch.inference_mode():
        module(*args)
    return float(fc.get_total_flops())


def _check_files(res: ProfileResult, out) -> None:
    doc = json.loads((out / "profile.json").read_text())
    assert doc["bottlenecks"] == [x.name for x in res.layers if x.pct > 0.05]
    hot_blocks = [b["name"] for b in doc["blocks"] if b["pct"] > 0.05]
    assert doc["bottleneck_blocks"] == hot_blocks and hot_blocks
    assert abs(sum(b["pct"] for b in doc["blocks"]) - 1.0) < 1e-6
    assert abs(sum(x["pct"] for x in doc["layers"]) - 1.0) < 1e-6
    csv_rows = (out / "profile.csv").read_text().strip().splitlines()
    assert len(csv_rows) == len(doc["layers"]) + 1 and csv_rows[0].startswith("name,kind,self_ms,pct")
    for png in ("profile_layers.png", "roofline.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
    page = (out / "profile.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and doc["bottleneck_blocks"][0] in page


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_profile_digits_cnn(digits, runtime, tmp_path):
    x = digits["data"]["x_test"][:64]
    # one thread: a shared machine's other work then slows profiled and plain runs alike
    res = slimforge.profile(digits["torch"], runtime=runtime, batch=64, data=digits["test"], runs=15, threads=1,
                            output_dir=tmp_path / runtime)
    assert res.batch == 64 and res.runtime == runtime
    # the layers' self times account for the end-to-end latency (plain runs interleaved with the profiled ones)
    assert 0.7 <= res.coverage <= 1.3, res.table()  # a ratio of two timings: 0.78 seen on a busy machine
    # FLOPs: FlopCounterMode's total on the module, whichever runtime ran it
    assert res.flops == pytest.approx(_flop_counter_total(digits["module"].eval(), x), rel=1e-6)
    convs = [x for x in res.layers if x.flops and "onv" in x.kind]
    assert len(convs) >= 2 and all(x.gflops_s and x.intensity for x in convs)
    if runtime != "torch":  # ONNX nodes are grouped under the module they came from
        assert all(not x.name.startswith("/") for x in res.layers)
        assert any(x.name.split(".")[-1].isdigit() or x.name.count(".") >= 1 for x in convs), [x.name for x in convs]
    _check_files(res, tmp_path / runtime)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_profile_minilm(minilm, runtime, tmp_path):
    res = slimforge.profile(minilm, runtime=runtime, batch=8, runs=8, threads=1, output_dir=tmp_path / runtime)
    assert 0.7 <= res.coverage <= 1.3, res.table()  # a ratio of two timings: 0.78 seen on a busy machine
    from slimforge.io.inputs import feeds_for

    feeds = feeds_for(minilm, None)(8)
    # FlopCounterMode plus the CPU flash-attention kernel its registry lacks: the attention products (2 x 2 x batch
    # x heads x seq^2 x head_dim a layer) are what the plain counter misses, and what ONNX Runtime's MatMuls show
    # (an export drops the BERT pooler's 384x384 product, which the sentence embedding does not use: 2.4 MFLOP)
    tol = 1e-6 if runtime == "torch" else 1e-3
    assert res.flops == pytest.approx(_flop_counter_total(minilm.handle, feeds), rel=tol)
    attention = 6 * 2 * (2 * 8 * 12 * 64 * 64 * 32)
    plain = _flop_counter_total(minilm.handle, feeds, cpu_sdpa=False)
    assert _flop_counter_total(minilm.handle, feeds) - plain == pytest.approx(attention, rel=1e-6)
    blocks = res.by_module(res.block_depth())
    layer0 = next(b for b in blocks if b.name.endswith("encoder.layer.0"))
    assert 0.05 < layer0.pct < 0.4  # one of six encoder layers: a real share of the time, not all of it
    assert any("attention" in x.name for x in res.layers)
    _check_files(res, tmp_path / runtime)


def test_profile_cli_writes_and_prints(digits, tmp_path):
    out = tmp_path / "prof"
    proc = subprocess.run([sys.executable, "-m", "slimforge", "profile", str(digits["onnx"].path), "--batch", "16",
                           "--runs", "5", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "bottlenecks (layers over 5% of the time):" in proc.stdout and "by block:" in proc.stdout
    assert (out / "profile.html").exists() and (out / "roofline.png").exists()
    bad = subprocess.run([sys.executable, "-m", "slimforge", "profile", str(digits["onnx"].path), "--runtime", "torch",
                          "-o", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "onnxruntime or openvino" in bad.stderr


def test_bottlenecks_and_blocks_from_numbers():
    layers = finish([LayerProfile(name=f"enc.layer.{i}.ffn", kind="Linear", self_ms=ms, calls=1, flops=2e6)
                     for i, ms in enumerate([4.0, 3.0, 2.0, 1.0])])
    res = ProfileResult(model="m", runtime="torch", device="cpu", batch=1, layers=layers, end_to_end_ms=10.0,
                        flops=8e6)
    assert [x.name for x in res.bottlenecks(0.05)] == [f"enc.layer.{i}.ffn" for i in range(4)]
    assert [x.name for x in res.bottlenecks(0.2)] == ["enc.layer.0.ffn", "enc.layer.1.ffn"]
    assert res.layers[0].pct == pytest.approx(0.4) and res.coverage == pytest.approx(1.0)
    assert res.layers[0].gflops_s == pytest.approx(2e6 / 4e6)
    with pytest.raises(slimforge.ConfigError):
        res.bottlenecks(5)
    assert res.block_depth() == 3 and [b.name for b in res.by_module(2)] == ["enc.layer"]


def test_onnx_scopes_and_flops_from_shapes():
    assert scope_of("/encoder/layer.0/attention/output/LayerNorm/Add_1") == "encoder.layer.0.attention.output.LayerNorm"
    assert scope_of("/0/Conv") == "0" and scope_of("MatMul_3") == "(graph)"
    assert node_flops("Conv", [[8, 3, 32, 32], [16, 3, 3, 3]], [[8, 16, 30, 30]]) == 2.0 * 8 * 16 * 30 * 30 * 27
    assert node_flops("Gemm", [[4, 10], [10, 5]], [[4, 5]]) == 2.0 * 4 * 5 * 10
    assert node_flops("Relu", [[4, 10]], [[4, 10]]) == 0.0


def test_profile_refuses_what_it_cannot_see(digits):
    with pytest.raises(slimforge.ConfigError, match="runtime torch"):
        slimforge.profile(digits["torch"], runtime="torch_compile")
