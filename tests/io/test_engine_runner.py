"""The engine loader opens an AOTInductor package's library itself (bound to itself first) and runs it; checked on a
CPU package, since the CI has no GPU (the GPU engine's fresh-process test is in tests/gpu)."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn


@pytest.mark.slow
def test_open_runner_runs_an_aoti_package_like_torchs_loader_and_leaves_no_scratch(tmp_path):
    from torch.export import Dim

    from slimforge.io.engine import open_runner

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    ep = torch.export.export(m, (torch.randn(2, 8),), dynamic_shapes=({0: Dim("b", min=1, max=64)},))
    path = tmp_path / "mlp.pt2"
    torch._inductor.aoti_compile_and_package(ep, package_path=str(path))
    runner = open_runner(path, device="cpu")
    scratch = runner.dir
    for b in (1, 7, 64):
        x = torch.randn(b, 8)
        (y,) = runner(x)
        assert y.shape == (b, 4)
        assert torch.allclose(y, m(x), atol=1e-5)
    del runner
    import gc

    gc.collect()
    assert not os.path.exists(scratch)
    # and in a fresh process, as a server would load it
    code = ("import torch, pathlib; from slimforge.io.engine import open_runner; torch.manual_seed(1); "
            f"r = open_runner(pathlib.Path(r'{path}'), device='cpu'); print(r(torch.ones(3, 8))[0].sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert abs(float(out.stdout.split()[-1]) - m(torch.ones(3, 8)).sum().item()) < 1e-4


@pytest.mark.slow
def test_a_package_with_one_model_per_batch_range_opens_each_by_name(tmp_path):
    """An engine with batch profiles is torch's multi-model package: each range's model compiled on its own, merged,
    opened by name (CPU packages here; the GPU engine that dispatches on them is tested in tests/gpu)."""
    from torch.export import Dim

    from slimforge.io.engine import merge_packages, models_in, open_runner

    torch.manual_seed(0)
    small, large = (nn.Sequential(nn.Linear(8, 4)).eval() for _ in range(2))  # two different models
    singles = {}
    for name, m, lo, hi in (("batch_1_5", small, 1, 5), ("batch_6_64", large, 6, 64)):
        ep = torch.export.export(m, (torch.randn(max(lo, 2), 8),),
                                 dynamic_shapes=({0: Dim("b", min=lo, max=hi)},))
        singles[name] = tmp_path / f"{name}.pt2"
        torch._inductor.aoti_compile_and_package(ep, package_path=str(singles[name]))
    merged = tmp_path / "engine.pt2"
    merge_packages(singles, merged)
    assert models_in(merged) == ["batch_1_5", "batch_6_64"]
    for name, m, b in (("batch_1_5", small, 3), ("batch_6_64", large, 40)):
        x = torch.randn(b, 8)
        (y,) = open_runner(merged, device="cpu", model=name)(x)
        assert torch.allclose(y, m(x), atol=1e-5)
        other = large if m is small else small
        assert not torch.allclose(y, other(x), atol=1e-3)  # the named model ran, not the other one
    with pytest.raises(Exception, match="no compiled model 'model'"):
        open_runner(merged, device="cpu")
    from slimforge.io.engine import _described  # without its sidecar, the ranges come from the models' names

    assert [(d["model"], d["lo"], d["hi"]) for d in _described(merged, {})] == [("batch_1_5", 1, 5),
                                                                              ("batch_6_64", 6, 64)]
