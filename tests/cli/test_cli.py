"""The CLI in process (typer's runner): thin commands over the API, clear errors, dry runs."""

import json

import pytest
import torch
from typer.testing import CliRunner

from slimforge.cli.app import app

runner = CliRunner()


@pytest.fixture()
def ts_model(tmp_path, mlp):
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.trace(mlp.eval(), torch.randn(1, 16)), path)
    return path


def test_help_for_every_command():
    for cmd in ("info", "export", "benchmark", "optimize", "run", "serve", "loadtest", "prune", "distill", "lowrank",
                "fuse", "quantize"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, cmd


def test_info_json(mlp_onnx):
    res = runner.invoke(app, ["info", str(mlp_onnx), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["parameters"] == 1738 and data["op_histogram"]["Gemm"] == 2


def test_info_names_scaled_output_dims(tmp_path):
    from tests.conftest import TinySR

    path = tmp_path / "sr.pt"
    torch.jit.save(torch.jit.trace(TinySR().eval(), torch.rand(1, 3, 16, 16)), path)
    res = runner.invoke(app, ["info", str(path), "--input-shape", "x:1x3x16x16", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert data["outputs"][0]["shape"] == ["batch", 3, "2*height", "2*width"]


def test_export_torchscript_with_input_shape(ts_model, tmp_path):
    out = tmp_path / "o" / "m.onnx"
    res = runner.invoke(app, ["export", str(ts_model), "-o", str(out), "--input-shape", "x:1x16", "--opset", "18"])
    assert res.exit_code == 0, res.output
    assert out.exists() and "verify_onnx_export: pass" in res.output


def test_export_dry_run_writes_nothing(ts_model, tmp_path):
    out = tmp_path / "o" / "m.onnx"
    res = runner.invoke(app, ["export", str(ts_model), "-o", str(out), "--dry-run", "--opset", "18"])
    assert res.exit_code == 0 and "type: export_onnx" in res.output and "opset: 18" in res.output
    assert not out.exists()


def test_benchmark_json(mlp_onnx, tmp_path):
    out = tmp_path / "b.json"
    res = runner.invoke(app, ["benchmark", str(mlp_onnx), "--batch", "1,4", "--repeats", "5", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["schema"] == "slimforge.report" and data["kind"] == "benchmark"
    assert set(data["baseline"]["latency_ms"]) == {"1", "4"} and data["baseline"]["runtime"] == "onnxruntime"
    assert data["baseline"]["shapes"]["4"] == {"input": [4, 16]}
    assert "p99 ms" in res.output


def test_bad_batch_is_a_clear_error(mlp_onnx):
    res = runner.invoke(app, ["benchmark", str(mlp_onnx), "--batch", "1,x"])
    assert res.exit_code != 0
    assert "--batch must be a comma-separated list" in str(res.exception)


def test_cli_prune_and_fuse_save_torchscript(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(32, 4)).eval()
    src = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 16, 16)), src)
    # TorchScript modules cannot be traced by torch.fx or pruned in place: a clear error, exit 2
    res = runner.invoke(app, ["fuse", str(src), "--input-shape", "input:1x3x16x16", "-o", str(tmp_path / "f.pt")])
    assert res.exit_code != 0 and "fuse edits the model's structure, which net.pt does not allow" in str(res.exception)


def test_cli_help_lists_compression_commands():
    res = runner.invoke(app, ["--help"])
    for cmd in ("prune", "distill", "lowrank", "fuse", "quantize"):
        assert cmd in res.output


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version_and_exits_0(flag):
    import subprocess
    import sys

    from slimforge.version import __version__

    res = runner.invoke(app, [flag])
    assert res.exit_code == 0 and res.output == f"slimforge {__version__}\n", res.output
    proc = subprocess.run([sys.executable, "-m", "slimforge", flag], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"slimforge {__version__}\n" and not proc.stderr
