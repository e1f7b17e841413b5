import numpy as np
import pytest

import slimforge
from slimforge.core.context import RunContext
from slimforge.core.registry import apply
from slimforge.convert.info import onnx_info
from slimforge.convert.optimize import GraphOptConfig
from slimforge.techniques.quantize.onnx_dynamic import DynamicQuantConfig


def test_graph_optimize_verifies_each_pass(mlp_onnx, tmp_path):
    art = slimforge.load(mlp_onnx)
    out = apply(art, GraphOptConfig(ort_level="extended"), RunContext(workdir=tmp_path))
    names = [c.name for c in out.checks]
    assert names == ["verify_onnxslim", "verify_ort_extended"]
    assert all(c.passed for c in out.checks)
    assert out.meta["graph_passes"] == ["onnxslim", "ort_extended"]
    assert out.path.exists() and out.path != art.path
    assert not (tmp_path / "tmp").exists()


def test_graph_pass_that_breaks_numerics_is_dropped(mlp_onnx, tmp_path, monkeypatch):
    import onnx

    import slimforge.convert.optimize as opt

    def bad_slim(src, dst):
        m = onnx.load(str(src))
        w = m.graph.initializer[0]
        arr = onnx.numpy_helper.to_array(w) + 1.0
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        onnx.save(m, str(dst))

    monkeypatch.setattr(opt, "_slim", bad_slim)
    out = apply(slimforge.load(mlp_onnx), GraphOptConfig(ort_level="none"), RunContext(workdir=tmp_path))
    assert out.meta["graph_passes"] == []
    assert out.checks[0].passed is False and "dropped" in out.checks[0].detail
    a, b = slimforge.open_session(slimforge.load(mlp_onnx)), slimforge.open_session(out)
    x = np.ones((2, 16), np.float32)
    assert np.array_equal(a.run({"input": x})[0], b.run({"input": x})[0])


def test_dynamic_quant_shrinks_and_records_fidelity(mlp_onnx, tmp_path):
    art = slimforge.load(mlp_onnx)
    out = apply(art, DynamicQuantConfig(per_channel=True), RunContext(workdir=tmp_path))
    check = out.checks[-1]
    assert check.name == "quant_fidelity" and check.passed
    assert check.metrics["cosine"] > 0.99
    assert out.size_bytes() < art.size_bytes()
    ops = onnx_info(out.path)["op_histogram"]
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    assert out.meta["precision"] == "int8-dynamic"


def test_quant_fidelity_failure_raises(mlp_onnx, tmp_path):
    with pytest.raises(slimforge.VerificationError, match="quant_fidelity failed"):
        apply(slimforge.load(mlp_onnx), DynamicQuantConfig(min_cosine=1.0), RunContext(workdir=tmp_path))
    assert not list((tmp_path / "artifacts").glob("*.onnx")) if (tmp_path / "artifacts").exists() else True


def test_onnx_info(mlp_onnx):
    info = slimforge.info(mlp_onnx)
    assert info["parameters"] == 16 * 64 + 64 + 64 * 10 + 10
    assert info["inputs"][0]["shape"] == ["batch", 16]
    assert info["op_histogram"]["Gemm"] == 2
    assert info["opset"]["ai.onnx"] == 17
    assert info["external_data"] is False
