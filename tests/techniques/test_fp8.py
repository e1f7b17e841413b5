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


def test_fp8_linear_rowwise_keeps_small_rows_that_tensorwise_underflows():
    """The FP8 GEMM (``torch._scaled_mm``, which also runs on CPU): per-row activation scales keep a row 10^7
    times smaller than its neighbour, one scale per tensor flushes it to zero."""
    from slimforge.techniques.quantize.torch_fp8 import Fp8Linear, quantize_fp8

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False).bfloat16()
    x = torch.randn(16, 64).bfloat16()
    x[0] *= 1000.0
    x[1] *= 1e-4
    with torch.no_grad():
        ref = lin(x).float()
        row, ten = Fp8Linear(lin, rowwise=True)(x).float(), Fp8Linear(lin, rowwise=False)(x).float()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    assert rel(row, ref) < 0.08 and rel(row[1], ref[1]) < 0.08
    assert rel(ten[1], ref[1]) > 0.9  # underflowed
    with torch.no_grad():  # 5 rows: padded to the GEMM's 16 inside, sliced back
        five = Fp8Linear(lin, rowwise=True)(x[2:7]).float()
    assert five.shape == (5, 32) and rel(five, ref[2:7]) < 0.08
    q, s = quantize_fp8(x.float(), rowwise=True)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (16, 1)
    assert rel(q.float() * s, x.float()) < 0.05


def test_fp8_linears_inside_pytorchs_own_transformer_encoder_run_through_the_modules():
    """nn.TransformerEncoderLayer's fused inference kernel reads each Linear's raw ``weight`` (an FP8 Linear has none:
    it crashed with AttributeError on the H200). With the fused paths turned off the layer computes through the
    swapped modules; ``torch._scaled_mm`` runs on CPU too, so this is checked here."""
    import copy

    from slimforge.techniques.quantize.torch_fp8 import Fp8Linear, _swap_linears
    from slimforge.torch_utils import without_fused_fastpaths

    enc = _encoder()
    x = torch.randn(2, 16, 256)
    m = copy.deepcopy(enc).bfloat16()
    _swap_linears(m, lambda c, _: type(c) is torch.nn.Linear, rowwise=True)
    assert sum(isinstance(c, Fp8Linear) for c in m.modules()) == 4
    without_fused_fastpaths(m)
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(m(x.bfloat16()).float().flatten(), enc(x).flatten(), dim=0)
    assert cos > 0.99
