"""ONNX export: verification on several shapes, dynamic axes, exporter fallback, external data, failures."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import slimforge
from slimforge.runtimes import open_session
from tests.conftest import TinyImage2Image, TinySR


def test_minilm_export_verifies_at_four_shapes(minilm, minilm_onnx):
    art = slimforge.load(minilm_onnx)
    assert art.io.inputs[0].shape == ("batch", "sequence")
    ref, cand = open_session(minilm), open_session(art)
    rng = np.random.default_rng(1)
    for b, s in [(1, 7), (3, 64), (32, 128), (5, 200)]:
        ids = rng.integers(1000, 29000, size=(b, s)).astype(np.int64)
        ids[:, 0] = 101
        mask = np.ones((b, s), np.int64)
        mask[0, s // 2:] = 0
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        diff = np.abs(ref.run(feeds)[0] - cand.run(feeds)[0]).max()
        assert diff <= 1e-4, (b, s, diff)


def test_export_check_is_recorded(mlp_art, tmp_path):
    out = slimforge.export(mlp_art, tmp_path / "m.onnx", workdir=tmp_path)
    check = out.checks[0]
    assert check.name == "verify_onnx_export" and check.passed
    assert check.metrics["max_abs"] < 1e-5 and check.metrics["cases"] == 2
    assert out.lineage[-1].name == "export_onnx"
    assert out.meta["exporter"] == "torchscript"


def test_conv_image_to_image_dynamic_hw(tmp_path):
    torch.manual_seed(0)
    model = TinyImage2Image().eval()
    art = slimforge.load(model, example_inputs=torch.randn(1, 3, 32, 48))
    out = slimforge.export(art, tmp_path / "i2i.onnx", workdir=tmp_path)
    graph = onnx.load(str(out.path))
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert "batch=2,64x64" in out.checks[0].detail  # verified at a second resolution
    sess = open_session(out)
    for h, w in [(32, 48), (96, 64)]:
        x = np.random.default_rng(h).standard_normal((2, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert np.abs(sess.run({"input": x})[0] - ref).max() < 1e-5


def test_super_resolution_exports_with_scaled_dynamic_output_dims(tmp_path):
    torch.manual_seed(0)
    model = TinySR().eval()
    art = slimforge.load(model, example_inputs=torch.rand(1, 3, 16, 24))
    out = slimforge.export(art, tmp_path / "sr.onnx", workdir=tmp_path)
    graph = onnx.load(str(out.path))
    dims = [d.dim_param or d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "2*height", "2*width"]
    assert out.checks[0].passed and "batch=2,48x40" in out.checks[0].detail
    assert slimforge.load(out.path).io.outputs[0].shape == ("batch", 3, "2*height", "2*width")
    x = np.random.default_rng(0).random((1, 3, 20, 28), dtype=np.float32)
    got = open_session(out).run({"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 3, 40, 56) and np.abs(got - ref).max() < 1e-5


def test_user_dynamic_axes_and_opset(mlp_art, tmp_path):
    out = slimforge.export(mlp_art, tmp_path / "m.onnx", opset=13, dynamic_axes=["input:0=n"], workdir=tmp_path)
    m = onnx.load(str(out.path))
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {13}
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"
    with pytest.raises(slimforge.ConfigError, match="does not have"):
        slimforge.export(mlp_art, tmp_path / "x.onnx", dynamic_axes=["nope:0"], workdir=tmp_path)


class TraceTrap(nn.Module):
    """Data-dependent control flow: tracing bakes in the branch the example took, so the export is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        if bool(x.mean() > 10):
            return self.lin(x) * 2
        return self.lin(x) * 3


def test_export_that_must_fail_verification_does(tmp_path):
    art = slimforge.load(TraceTrap(), example_inputs=torch.full((1, 8), 100.0))
    target = tmp_path / "out" / "trap.onnx"
    with pytest.raises(slimforge.VerificationError, match="output 'output' differs from the reference") as err:
        slimforge.export(art, target, workdir=tmp_path / "out")
    assert "torchscript" in str(err.value)
    assert not target.exists(), "a failed export must leave no file behind"
    assert not list((tmp_path / "out").glob("*.onnx"))


def test_dynamo_exporter(mlp_art, tmp_path):
    out = slimforge.export(mlp_art, tmp_path / "d.onnx", exporter="dynamo", workdir=tmp_path)
    assert out.meta["exporter"] == "dynamo"
    assert out.checks[0].passed


def test_external_data_threshold(mlp_art, tmp_path, monkeypatch):
    import slimforge.convert.onnx as exp

    monkeypatch.setattr(exp, "_TWO_GB", 1000)  # pretend the 2 GB limit is 1 kB: the automatic path must kick in
    out = slimforge.export(mlp_art, tmp_path / "big.onnx", workdir=tmp_path)
    m = onnx.load(str(out.path), load_external_data=False)
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in m.graph.initializer)
    assert (tmp_path / "big.onnx.data").exists()
    assert out.checks[0].passed


def test_falls_back_to_dynamo_when_torchscript_fails(mlp_art, tmp_path, monkeypatch):
    import slimforge.convert.onnx as exp

    real = exp._run_exporter

    def flaky(exporter, *args, **kw):
        if exporter is exp.Exporter.TORCHSCRIPT:
            raise RuntimeError("unsupported operator aten::made_up")
        return real(exporter, *args, **kw)

    monkeypatch.setattr(exp, "_run_exporter", flaky)
    out = slimforge.export(mlp_art, tmp_path / "m.onnx", workdir=tmp_path)
    assert out.meta["exporter"] == "dynamo" and out.checks[0].passed
    monkeypatch.setattr(exp, "_run_exporter", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("nope")))
    with pytest.raises(slimforge.TechniqueFailed, match="failed with every exporter: torchscript: RuntimeError: nope"):
        slimforge.export(mlp_art, tmp_path / "n.onnx", workdir=tmp_path)
    assert not (tmp_path / "n.onnx").exists()
