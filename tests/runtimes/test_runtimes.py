"""Every runtime opens what it claims to, gives the same numbers, and fails clearly otherwise."""

import numpy as np
import pytest

import slimforge
from slimforge.runtimes import available_runtimes, get_runtime, open_session
from tests.conftest import rand


def test_all_three_runtimes_available():
    assert {"torch", "onnxruntime", "openvino"} <= set(available_runtimes())


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_runtimes_match_torch(mlp_art, mlp_onnx, runtime):
    x = rand(7, 16, seed=3)
    ref = open_session(mlp_art, "torch").run({"input": x})[0]
    sess = open_session(slimforge.load(mlp_onnx), runtime, threads=1)
    got = sess.run({"input": x})[0]
    sess.sync()
    sess.close()
    assert got.shape == (7, 10)
    assert np.abs(got - ref).max() < 1e-5


def test_minilm_on_three_runtimes(minilm, minilm_onnx):
    art = slimforge.load(minilm_onnx)
    feeds = {k: v for k, v in minilm.examples.items()}
    ref = open_session(minilm, "torch").run(feeds)[0]
    for rt in ("onnxruntime", "openvino"):
        assert np.abs(open_session(art, rt).run(feeds)[0] - ref).max() < 1e-4, rt


def test_openvino_bf16_hint_changes_numerics_a_little(mlp_onnx):
    art = slimforge.load(mlp_onnx)
    x = rand(4, 16)
    fp32 = open_session(art, "openvino").run({"input": x})[0]
    hinted = open_session(art, "openvino", precision="bf16").run({"input": x})[0]
    assert np.abs(fp32 - hinted).max() < 0.05
    with pytest.raises(slimforge.ConfigError, match="precision"):
        open_session(art, "openvino", precision="int3")


def test_torch_bf16_session_leaves_user_module_in_fp32(mlp, mlp_art):
    out = open_session(mlp_art, "torch", precision="bf16").run({"input": rand(2, 16)})[0]
    assert out.dtype == np.float32
    assert next(mlp.parameters()).dtype.is_floating_point and str(next(mlp.parameters()).dtype) == "torch.float32"


def test_wrong_format_and_unknown_runtime(mlp_art):
    with pytest.raises(slimforge.UnsupportedModelError, match="export it first"):
        open_session(mlp_art, "onnxruntime")
    with pytest.raises(slimforge.ConfigError, match="unknown runtime"):
        get_runtime("tensorflow")


def test_unavailable_device_is_a_clear_error(mlp_art):
    if "cuda" in get_runtime("torch").devices():
        pytest.skip("this machine has CUDA")
    with pytest.raises(slimforge.ConfigError, match="no device 'cuda'"):
        open_session(mlp_art, "torch", device="cuda")


@pytest.mark.gpu
def test_torch_cuda_session(mlp_art):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = rand(3, 16)
    gpu = open_session(mlp_art, "torch", device="cuda").run({"input": x})[0]
    cpu = open_session(mlp_art, "torch").run({"input": x})[0]
    # GPUs may run FP32 matmuls in TF32 (10-bit mantissa): compare relative to the output's scale
    assert np.abs(gpu - cpu).max() <= 2e-3 * np.abs(cpu).max()
    assert next(mlp_art.handle.parameters()).device.type == "cpu", "the user's module must stay on the CPU"
