"""Every quantize method writes exactly where it is told (-o / output=), with the suffix of its format, and says
"nothing was quantized" when it found nothing to quantize (counted in its result, recorded in meta and a check)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import slimforge
from slimforge.errors import NothingQuantized

SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml", "torch": ".pt", "torch_compile": ".pt"}


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    """A two-layer network on [batch, 4, 64] inputs: its Linear layers export as MatMul (what int4 applies to)."""
    d = tmp_path_factory.mktemp("mm")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 16)).eval()
    art = slimforge.load(net, example_inputs=torch.randn(2, 4, 64), name="mm")
    np.savez(d / "calib.npz", input=np.random.default_rng(0).standard_normal((32, 4, 64)).astype(np.float32))
    return {"torch": art, "onnx": slimforge.export(art, d / "mm.onnx", workdir=d), "calib": d / "calib.npz"}


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """A CNN with no MatMul/Gemm at all (a 1x1 convolution classifies): nothing for int4 or dynamic INT8."""
    d = tmp_path_factory.mktemp("conv")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 10, 1),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    art = slimforge.load(net, example_inputs=torch.randn(2, 3, 16, 16), name="convnet")
    return {"torch": art, "onnx": slimforge.export(art, d / "convnet.onnx", workdir=d), "dir": d}


@pytest.mark.parametrize("method, runtime", [
    ("dynamic", "onnxruntime"), ("static", "onnxruntime"), ("fp16", "onnxruntime"), ("int8-weight", "onnxruntime"),
    ("int4", "onnxruntime"), ("static", "openvino"), ("int8-weight", "openvino"), ("int4", "openvino"),
    ("fp16", "openvino"), ("bf16", "openvino"), ("dynamic", "torch"), ("fp16", "torch"), ("bf16", "torch"),
])
def test_every_method_writes_exactly_at_output(mm, tmp_path, method, runtime):
    src = mm["torch"] if runtime.startswith("torch") else mm["onnx"]
    out = tmp_path / "q" / f"x{SUFFIX[runtime]}"
    q = slimforge.quantize(src, method, runtime=runtime, output=out, check_speed=False,
                           data=mm["calib"] if method == "static" else None, workdir=tmp_path / "work")
    assert q.path == out and out.is_file()
    if runtime == "openvino":
        assert out.with_suffix(".bin").is_file()
    reloaded = slimforge.load(out, example_inputs=torch.ones(2, 4, 64) if out.suffix == ".pt" else None)
    x = {reloaded.io.input_names[0]: np.ones((2, 4, 64), np.float32)}
    assert slimforge.open_session(reloaded).run(x)[0].shape == (2, 4, 16)
    assert sorted(p.name for p in (tmp_path / "q").iterdir() if not p.name.startswith(".")) == sorted(
        [out.name, out.name + ".slimforge.json"] + ([out.with_suffix(".bin").name] if runtime == "openvino" else []))
    if not (runtime == "openvino" and method in ("fp16", "bf16")):  # (a precision hint: nothing to count)
        counted = q.meta["quantized"]
        assert counted["ops"] + counted["weights"] > 0 and counted["weighted_ops"] == 2, counted
        assert any(c.name == "quantized_ops" and c.passed for c in q.checks)


@pytest.mark.parametrize("method, runtime, name, fmt", [
    ("fp16", "openvino", "x.onnx", "OpenVINO IR"), ("dynamic", "onnxruntime", "x.xml", "ONNX"),
    ("dynamic", "torch", "x.onnx", "TorchScript"),
])
def test_a_suffix_that_does_not_fit_is_refused_before_any_work(mm, tmp_path, method, runtime, name, fmt):
    src = mm["torch"] if runtime == "torch" else mm["onnx"]
    with pytest.raises(slimforge.ConfigError, match=f"does not fit: {method} on {runtime} writes {fmt}"):
        slimforge.quantize(src, method, runtime=runtime, output=tmp_path / name, check_speed=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("method, runtime, says", [
    ("int4", "onnxruntime", "int4 weight-only (ONNX Runtime MatMulNBits) applies to MatMul"),
    ("dynamic", "onnxruntime", "dynamic INT8 (ONNX Runtime) applies to MatMul, Gemm"),
    ("int4", "openvino", "int4 weight compression (NNCF) applies to MatMul"),
    ("dynamic", "torch", "dynamic INT8 (torch.ao) applies to Linear, LSTM and GRU layers"),
])
def test_nothing_quantized_is_said(convnet, tmp_path, method, runtime, says):
    src = convnet["torch"] if runtime == "torch" else convnet["onnx"]
    with pytest.raises(NothingQuantized, match=f"^nothing was quantized: {re.escape(says)}.*; this model has none"
                       ) as info:
        slimforge.quantize(src, method, runtime=runtime, output=tmp_path / f"q{SUFFIX[runtime]}",
                           workdir=tmp_path / "work")
    assert "\n" not in str(info.value)
    assert not (tmp_path / f"q{SUFFIX[runtime]}").exists()
    # static INT8 does apply to convolutions: counted, and not refused
    q = slimforge.quantize(convnet["onnx"], "static", data=_calib(tmp_path), check_speed=False,
                           workdir=tmp_path / "work") if method == "int4" and runtime == "onnxruntime" else None
    if q is not None:
        assert q.meta["quantized"]["kinds"]["DequantizeLinear (weight)"] == 2


def _calib(tmp_path):
    p = tmp_path / "calib.npz"
    np.savez(p, input=np.random.default_rng(0).random((16, 3, 16, 16), dtype=np.float32))
    return p


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(slimforge.__file__).parents[1])}  # this checkout, from any folder
    return subprocess.run([sys.executable, "-m", "slimforge", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=240, env=env)


def test_cli_quantize_honours_o_and_says_what_went_wrong_in_one_line(mm, convnet, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slimforge.cli import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["quantize", str(mm["onnx"].path), "--method", "fp16", "--runtime", "openvino",
                                 "-o", "q/x.xml", "--batch", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "q" / "x.xml").is_file() and (tmp_path / "q" / "x.bin").is_file()
    assert "wrote q/x.xml" in r.output
    r = _cli("quantize", str(mm["onnx"].path), "--method", "fp16", "--runtime", "openvino", "-o", "q/y.onnx",
             cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: output 'q/y.onnx' does not fit: fp16 on openvino writes OpenVINO IR (.xml + .bin); name it q/y.xml"]
    r = _cli("quantize", str(convnet["onnx"].path), "--method", "int4", "-o", "q/z.onnx", cwd=tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: nothing was quantized: int4")
    assert "Traceback" not in r.stderr and not (tmp_path / "q" / "z.onnx").exists()


def test_a_model_that_is_one_linear_layer_is_quantized_for_real(tmp_path):
    # torch.ao swaps child modules only: a bare nn.Linear used to come back in float, reported as "int8-dynamic"
    torch.manual_seed(0)
    art = slimforge.load(torch.nn.Linear(64, 64), example_inputs=torch.randn(2, 64))
    q = slimforge.quantize(art, "dynamic", runtime="torch", check_speed=False, workdir=tmp_path)
    assert q.meta["quantized"]["kinds"].get("Linear") == 1 and q.meta["quantized"]["weights"] >= 1
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    a, b = (slimforge.open_session(m).run({"input": x})[0] for m in (art, q))
    assert 0 < np.abs(a - b).max() < 0.1  # INT8 weights: close, not identical
