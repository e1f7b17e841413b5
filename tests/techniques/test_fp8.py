"""FP8 through torchao on a GPU of compute capability >= 8.9; on any other machine it must refuse cleanly."""

import numpy as np
import pytest
import torch

import slimforge
from slimforge.techniques.quantize.torch_fp8 import fp8_supported


def _encoder():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024, batch_first=True)
    return torch.nn.TransformerEncoder(layer, num_layers=2).eval()


def test_fp8_refuses_cleanly_without_a_capable_gpu(tmp_path):
    if fp8_supported():
        pytest.skip("this machine can run FP8")
    art = slimforge.load(_encoder(), example_inputs=torch.randn(2, 16, 256))
    with pytest.raises(slimforge.UnsupportedModelError, match="compute capability >= 8.9"):
        slimforge.quantize(art, "fp8", runtime="torch", workdir=tmp_path, check_speed=False)


@pytest.mark.gpu
def test_fp8_on_gpu_verifies_and_runs(tmp_path):
    if not fp8_supported():
        pytest.skip("needs an NVIDIA GPU of compute capability >= 8.9")
    art = slimforge.load(_encoder(), example_inputs=torch.randn(2, 16, 256))
    q = slimforge.quantize(art, "fp8", runtime="torch", workdir=tmp_path, batch_sizes=(8,),
                           spec=slimforge.BenchSpec(warmup=2, repeats=5, min_time_s=0))
    fid = next(c for c in q.checks if c.name == "quant_fidelity")
    assert fid.passed and fid.metrics["cosine"] > 0.99
    assert q.meta["precision"] == "fp8" and q.meta["quantized_layers"] >= 4
    x = np.random.default_rng(0).standard_normal((4, 32, 256)).astype(np.float32)
    out = slimforge.open_session(q, "torch", device="cuda").run({art.io.input_names[0]: x})[0]
    assert out.shape == (4, 32, 256) and out.dtype == np.float32
