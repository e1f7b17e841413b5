"""Third-party warnings and logs printed during API calls go to slimforge's log, never to the user's terminal."""

import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import slimforge
from slimforge.core.logs import quiet_libraries


def _unused_initializer_model() -> bytes:
    """An ONNX model with an initializer no node uses: ONNX Runtime's C++ logger warns when it opens it."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(np.ones(3, np.float32), "unused_weight")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture()
def noisy_library(monkeypatch):
    """ONNX Runtime's quantize_dynamic, made to speak as libraries do: a Python warning, its own logger, a direct
    ``logging.warning`` on the root logger, and a C++ log line; then it does its real work."""
    import onnxruntime as ort
    import onnxruntime.quantization as q

    real = q.quantize_dynamic

    def chatty(*args, **kwargs):
        warnings.warn("THIRD-PARTY python warning", FutureWarning)
        logging.getLogger("onnxruntime.quantization.base").warning("THIRD-PARTY library log")
        logging.warning("THIRD-PARTY root log")
        ort.InferenceSession(_unused_initializer_model(), providers=["CPUExecutionProvider"])
        return real(*args, **kwargs)

    monkeypatch.setattr(q, "quantize_dynamic", chatty)


def test_quantize_through_the_api_prints_no_third_party_output(mlp_onnx, tmp_path, noisy_library, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="slimforge")
    root_handlers = list(logging.getLogger().handlers)
    q = slimforge.quantize(mlp_onnx, "dynamic", output=tmp_path / "q.onnx", check_speed=False)
    assert q.path.is_file()
    out, err = capfd.readouterr()
    assert "THIRD-PARTY" not in out + err and "unused_weight" not in err, err
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("slimforge.thirdparty"))
    for text in ("FutureWarning", "THIRD-PARTY python warning", "WARNING onnxruntime.quantization.base: THIRD-PARTY "
                 "library log", "WARNING root: THIRD-PARTY root log"):
        assert text in logged, (text, logged)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name.startswith("slimforge.thirdparty"))
    assert logging.getLogger().handlers == root_handlers  # the host's logging is left as it was
    assert logging.getLogger("onnxruntime").propagate and not logging.getLogger("onnxruntime").handlers


def test_onnxruntime_cpp_log_lands_in_the_log_when_debugging(tmp_path, monkeypatch, caplog, capfd):
    import onnxruntime as ort

    monkeypatch.setenv("SLIMFORGE_LOG", "debug")
    caplog.set_level(logging.DEBUG, logger="slimforge")
    with quiet_libraries():
        ort.InferenceSession(_unused_initializer_model(), providers=["CPUExecutionProvider"])
    assert "unused_weight" not in capfd.readouterr().err
    assert any("unused_weight" in r.getMessage() and r.name == "slimforge.thirdparty.onnxruntime"
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_real_torch_quantization_is_quiet(tmp_path, capfd, caplog):
    """PT2E static INT8 and its TorchScript file: torch.export, torchao and torch.jit warn a lot."""
    caplog.set_level(logging.DEBUG, logger="slimforge")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    art = slimforge.load(net, example_inputs=torch.randn(2, 16))
    np.savez(tmp_path / "c.npz", input=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as a user's program may have it: every warning shown
        q = slimforge.quantize(art, "static", runtime="torch_compile", data=tmp_path / "c.npz",
                               output=tmp_path / "q.pt", check_speed=False)
    assert q.path.is_file()
    err = capfd.readouterr().err
    assert "Warning" not in err and "WARNING" not in err, err
    assert any(r.name.startswith("slimforge.thirdparty") for r in caplog.records)
