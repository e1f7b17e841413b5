"""The gpu target. Without CUDA (CI): one clear line and exit 2, and the proposers' GPU candidates. With CUDA
(marked ``gpu``): the search runs and measures on the GPU, and the winner is an engine file that loads and serves."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import slimforge
from slimforge.auto.candidates import SearchSpace, propose
from slimforge.auto.targets import get_target

CUDA = torch.cuda.is_available()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_gpu_target_without_cuda_exits_2_with_one_line(tmp_path):
    model = tmp_path / "m.pt2"
    slimforge.save(slimforge.load(Tiny().eval(), example_inputs=torch.randn(1, 3, 8, 8)), model)
    proc = subprocess.run([sys.executable, "-m", "slimforge", "optimize", str(model), "--target", "gpu", "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "--target cpu" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_gpu_proposer_offers_placed_compiled_and_fp8_variants():
    art = slimforge.load(Tiny().eval(), example_inputs=torch.randn(1, 3, 8, 8))
    space = SearchSpace(art=art, target=get_target("gpu"), train_seconds=None)
    names = {c.name: c for c in propose(space)}
    for want in ("torch tf32", "torch bf16 eager", "torch fp16 eager", "torch fp16 channels_last",
                 "torch bf16 + compile", "torch fp16 + compile + CUDA graphs",
                 "torch bf16 + compile + CUDA graphs", "torch fp8 rowwise + compile + CUDA graphs",
                 "torch fp16 + compile + CUDA graphs, attention fused", "torch fp8 rowwise"):
        assert want in names, sorted(names)
    assert "torch int8 dynamic (torchao) + compile" not in names  # an attention model: its compile never finished
    assert all(c.runtime == "torch" for c in names.values())  # no CPU runtime is offered for the GPU
    graphs = names["torch fp16 + compile + CUDA graphs"].steps[-1]
    assert graphs.channels_last and graphs.compile.value == "reduce-overhead"  # a conv net: channels_last too
    patch = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.Flatten(), nn.Linear(16 * 4, 10))  # a ViT-like stem
    vit_like = {c.name for c in propose(SearchSpace(art=slimforge.load(patch.eval(), example_inputs=torch.randn(
        1, 3, 8, 8)), target=get_target("gpu"), train_seconds=None))}
    assert "torch fp16 eager" in vit_like and not any("channels_last" in n for n in vit_like)
    assert "torch int8 dynamic (torchao) + compile" in vit_like  # no attention: INT8 is tried
    cpu = {c.name for c in propose(SearchSpace(art=art, target=get_target("cpu"), train_seconds=None))}
    assert not any(n.startswith("torch tf32") or "CUDA graphs" in n for n in cpu)


def test_onnx_model_on_the_gpu_target_names_what_is_needed(tmp_path, mlp_onnx, monkeypatch):
    import importlib

    from slimforge.auto.targets import Machine

    search_mod = importlib.import_module("slimforge.auto.search")

    fake = Machine(cpu="x", flags=(), cuda=True, cuda_name="H200", fp8=True,
                   runtimes=("torch", "onnxruntime", "openvino"))
    monkeypatch.setattr(search_mod, "detect_machine", lambda: fake)
    with pytest.raises(slimforge.ConfigError, match=r"gpu target optimises PyTorch models.*onnxruntime-gpu"):
        search_mod.search(slimforge.load(mlp_onnx), target="gpu")


@pytest.mark.skipif(CUDA, reason="checks the refusal without CUDA")
def test_gpu_step_refuses_without_cuda():
    from slimforge.techniques.gpu import GpuConfig

    art = slimforge.load(Tiny().eval(), example_inputs=torch.randn(1, 3, 8, 8))
    from slimforge.core.context import RunContext
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe

    with pytest.raises(slimforge.SlimforgeError, match="needs an NVIDIA GPU"):
        run_steps(art, Recipe(steps=(GpuConfig(dtype="bf16"),), runtime="torch"), RunContext())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_search_measures_on_the_gpu_and_writes_an_engine(tmp_path):
    model = Tiny().eval()
    res = slimforge.auto_optimize(slimforge.load(model, example_inputs=torch.randn(1, 3, 16, 16)), target="gpu",
                                  output_dir=tmp_path / "out", time_budget_s=600, use_cache=False)
    rows = res.report["candidates"]
    measured = [r for r in rows if r.get("latency_ms")]
    assert len(measured) >= 6, [(r["name"], r["status"], r["reason"]) for r in rows]
    assert res.report["baseline"].get("end_to_end_ms")  # timed on the GPU: compute and end to end
    assert all(r.get("peak_memory_mb") for r in measured)  # device memory per variant
    art_path = res.paths.get("artifact")
    assert art_path is not None and art_path.suffix == ".pt2", res.report["notes"]
    # a fresh process loads the engine without the model's code and gives the same outputs
    code = ("import sys, numpy as np, torch, slimforge; a = slimforge.load(sys.argv[1]); "
            "x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype('float32'); "
            "from slimforge.runtimes import open_session; np.save(sys.argv[2], open_session(a).run({a.io.input_names[0]: x})[0])")
    subprocess.run([sys.executable, "-c", code, str(art_path), str(tmp_path / "y.npy")], check=True, timeout=300)
    import numpy as np

    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype("float32")
    with torch.no_grad():
        ref = model.cuda()(torch.from_numpy(x).cuda()).cpu().numpy()
    got = np.load(tmp_path / "y.npy")
    cos = float((ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cos > 0.99, cos


def test_placed_casts_inside_and_fp32_precision_restores_the_flags():
    from slimforge.torch_utils import Placed, fp32_precision

    conv = nn.Conv2d(3, 4, 3).to(torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    y = Placed(conv, torch.bfloat16, channels_last=True)(x)
    assert y.dtype == torch.float32 and y.shape == (2, 4, 6, 6)
    ref = nn.functional.conv2d(x, conv.weight.float(), conv.bias.float())
    assert float((y - ref).norm() / ref.norm()) < 0.02
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    before = m.allow_tf32, c.allow_tf32
    with fp32_precision(True):
        assert m.allow_tf32 and c.allow_tf32
        with fp32_precision(False):
            assert not m.allow_tf32 and not c.allow_tf32
        assert m.allow_tf32
    assert (m.allow_tf32, c.allow_tf32) == before


def test_a_search_worth_of_compiled_models_all_run_compiled():
    """Every placed model shares ``Placed.forward``; Dynamo's default recompile limit (8) made the ninth and later
    compiled variants of a search silently run eager (runs on CPU: Inductor compiles for it too)."""
    from torch.profiler import profile

    from slimforge.techniques.gpu import GpuConfig, GpuModule

    cfg = GpuConfig(dtype="fp32", compile="default", min_cosine=0.0)
    mods = [GpuModule(nn.Linear(8 + i, 8).eval(), cfg, torch.device("cpu"), None) for i in range(10)]  # 10 models
    with torch.inference_mode():
        for m in mods:
            m(torch.randn(2, m.inner.in_features))
        with profile() as prof:
            mods[-1](torch.randn(2, 17))
    assert any("Torch-Compiled Region" in e.key for e in prof.key_averages())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_engine_with_cuda_graphs_captures_each_shape_and_matches_plain_runs(tmp_path):
    """AOTInductor's runner queries its last run's event before each run, which the default capture mode forbids:
    the engine must still be captured (not silently fall back) and replay the same numbers at each batch size."""
    import numpy as np

    from slimforge.core.context import RunContext
    from slimforge.io.engine import load_engine, write_engine
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe
    from slimforge.techniques.gpu import GpuConfig

    art = slimforge.load(Tiny().eval(), example_inputs=torch.randn(1, 3, 16, 16))
    placed = run_steps(art, Recipe(steps=(GpuConfig(dtype="fp16", compile="reduce-overhead"),), runtime="torch"),
                       RunContext())
    write_engine(placed, tmp_path / "tiny.pt2")
    eng = load_engine(tmp_path / "tiny.pt2", examples=art.examples, meta={"gpu": "fp16 + compile + CUDA graphs"},
                      source_id="t")
    module = eng.handle
    (profile,) = module.profiles
    assert profile.graphs
    for b in (1, 4, 1):
        x = torch.from_numpy(np.random.default_rng(b).standard_normal((b, 3, 16, 16)).astype("float32"))
        graphed = module(x)
        plain = module._run(profile, [x.cuda()])[0]
        assert torch.allclose(graphed.float(), plain.float(), atol=1e-3), (b, (graphed - plain).abs().max())
    shapes = {k[1][0] for k in module._captured}  # (loading probed other batch sizes too)
    assert profile.graphs and {(1, 3, 16, 16), (4, 3, 16, 16)} <= shapes  # captured, not fallen back to plain
    # runs


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_an_engine_file_loads_and_runs_in_a_fresh_process(tmp_path):
    """The engine is for another process (a server): loaded there without the model's code or a compile, it gives
    the outputs of the process that built it. torch 2.11's own loader segfaulted in every fresh process on an H200
    (its library's own C++ runtime bound half to the process's copy)."""
    import numpy as np

    from slimforge.core.context import RunContext
    from slimforge.io.engine import load_engine, write_engine
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe
    from slimforge.techniques.gpu import GpuConfig

    art = slimforge.load(Tiny().eval(), example_inputs=torch.randn(1, 3, 16, 16))
    placed = run_steps(art, Recipe(steps=(GpuConfig(dtype="fp16"),), runtime="torch"), RunContext())
    path = tmp_path / "tiny.pt2"
    write_engine(placed, path)
    x = np.random.default_rng(3).standard_normal((5, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    here = load_engine(path, examples=art.examples, meta={"gpu": "fp16"}, source_id="t").handle(torch.from_numpy(x))
    name = next(iter(art.examples))
    code = ("import sys, numpy as np, torch; from slimforge.io.engine import load_engine; "
            f"x = np.load(r'{tmp_path / 'x.npy'}'); "
            f"m = load_engine(__import__('pathlib').Path(r'{path}'), examples={{'{name}': x[:1]}}, "
            "meta={'gpu': 'fp16'}, source_id='t').handle; "
            f"np.save(r'{tmp_path / 'y.npy'}', m(torch.from_numpy(x)).float().cpu().numpy())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = np.load(tmp_path / "y.npy").ravel()
    ref = here.float().cpu().numpy().ravel()
    cos = float(ref @ there / (np.linalg.norm(ref) * np.linalg.norm(there)))
    assert cos >= 0.9999, cos


def test_a_weights_fallback_is_served_with_its_steps_applied_again(tmp_path, caplog):
    """When a GPU engine cannot be compiled, the original model is written with the winner's steps in its sidecar;
    the server applies them again on a GPU, and without one serves the original and says so (never silently)."""
    import dataclasses
    import logging

    import numpy as np

    from slimforge.serve.models import open_model
    from slimforge.techniques.gpu import GpuConfig

    art = slimforge.load(Tiny().eval(), example_inputs=torch.randn(1, 3, 16, 16))
    steps = [GpuConfig(dtype="fp16").to_dict()]
    path = tmp_path / "Tiny-gpu-weights.pt2"
    slimforge.save(dataclasses.replace(art, meta={**art.meta, "reapply_on_load": steps}), path)
    with caplog.at_level(logging.INFO, logger="slimforge.serve.models"):
        served = open_model(path, name=None, version="1", runtime=None, threads=None)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out = served.session.run({art.io.input_names[0]: x})[0]
    ref = Tiny().eval()
    ref.load_state_dict(art.handle.state_dict())
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    if CUDA:
        assert served.artifact.meta.get("device") == "cuda" and "applying its steps again" in caplog.text
        assert np.allclose(out, expected, atol=5e-2)
    else:
        assert served.artifact.meta.get("device") != "cuda"
        assert "for a GPU and this machine has none" in caplog.text
        assert np.allclose(out, expected, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_an_engine_with_batch_profiles_runs_each_range_on_its_own_variant_in_a_fresh_process(tmp_path):
    """The no-slowdown rule per batch size, in the file: small batches on the fp16 CUDA-graph variant, large ones on
    bf16 without graphs; saved (each range checked against its own placed model), loaded in a fresh process."""
    import numpy as np

    from slimforge.core.context import RunContext
    from slimforge.io.engine import Profile, models_in
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe
    from slimforge.runtimes import open_session
    from slimforge.techniques.gpu import GpuConfig

    art = slimforge.load(Tiny().eval(), example_inputs=torch.randn(1, 3, 16, 16))
    graphs, bf16 = (run_steps(art, Recipe(steps=(cfg,), runtime="torch"), RunContext()) for cfg in
                    (GpuConfig(dtype="fp16", compile="reduce-overhead"), GpuConfig(dtype="bf16")))
    path = tmp_path / "tiny.pt2"
    loaded = slimforge.save(graphs, path, profiles=[Profile(1, 5, graphs), Profile(6, 64, bf16)])
    assert models_in(path) == ["batch_1_5", "batch_6_64"]
    eng = loaded.handle
    assert eng.profile_for(3).graphs and not eng.profile_for(40).graphs
    with pytest.raises(ValueError, match="outside the engine's batch range 1-64"):
        eng.profile_for(65)
    x = np.random.default_rng(5).standard_normal((40, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, slimforge; "
            f"m = slimforge.open_session(slimforge.load(r'{path}')); x = np.load(r'{tmp_path / 'x.npy'}'); "
            f"np.save(r'{tmp_path / 'y3.npy'}', m.run({{'{next(iter(art.examples))}': x[:3]}})[0]); "
            f"np.save(r'{tmp_path / 'y40.npy'}', m.run({{'{next(iter(art.examples))}': x}})[0])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = next(iter(art.examples))
    for b, ref_art in ((3, graphs), (40, bf16)):
        there = np.load(tmp_path / f"y{b}.npy").ravel().astype(np.float64)
        ref = open_session(ref_art).run({name: x[:b]})[0].ravel().astype(np.float64)
        cos = float(ref @ there / (np.linalg.norm(ref) * np.linalg.norm(there)))
        assert cos >= 0.9999, (b, cos)
