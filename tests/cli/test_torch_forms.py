"""Every PyTorch form through the commands that edit a model (#13): prune, fuse, lowrank and distill on a state dict
with its class (``--arch``/``--weights``) and on a ``torch.export`` ``.pt2``; TorchScript and a lone state dict are
refused in one line that says what works; and the README's chain ``prune -> distill -> quantize -> optimize``
through files.

The class lives in a module written to the test's folder (imported from the current folder, as ``--arch`` does);
the commands run in process (typer's runner), and the refusals also from a fresh ``python -m slimforge`` (exit 2,
one line, no traceback)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import slimforge
from slimforge.cli import app
from slimforge.core.artifact import Format
from slimforge.errors import SlimforgeError

runner = CliRunner()

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes: int = 4, width: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 64)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))
'''
SHAPE = ["--input-shape", "x:1x3x16x16", "--batch", "1"]


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    d = tmp_path_factory.mktemp("forms")
    (d / "formsnet.py").write_text(NET)
    sys.path.insert(0, str(d))
    try:
        net_cls = importlib.import_module("formsnet").Net
        torch.manual_seed(0)
        net = net_cls(classes=4, width=32)
        with torch.no_grad():  # BatchNorm statistics that are not the identity, so fusion has work to do
            for bn in (net.bn, net.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
        net.eval()
        torch.save(net.state_dict(), d / "net.pth")
        torch.export.save(torch.export.export(net, (torch.randn(2, 3, 16, 16),),
                                              dynamic_shapes=({0: torch.export.Dim("batch")},)), d / "net.pt2")
        torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 16, 16)), d / "net.pt")
        x = np.random.default_rng(0).standard_normal((96, 3, 16, 16)).astype(np.float32)
        np.savez(d / "d.npz", x=x)
        yield SimpleNamespace(dir=d, net=net, x=x, params=sum(p.numel() for p in net.parameters()))
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("formsnet", None)


FAST = slimforge.BenchSpec(warmup=1, repeats=3, min_time_s=0, rounds=3, max_rounds=3)


@pytest.fixture()
def cwd(forms, tmp_path, monkeypatch):
    """Each test works in a folder of its own holding the inputs (the class module among them); the commands' speed
    checks time a few rounds only (what is tested here is what they make, not how fast)."""
    import slimforge.api
    import slimforge.compress

    for module in (slimforge.api, slimforge.compress):
        timed = module.speed_check
        monkeypatch.setattr(module, "speed_check", lambda *a, _t=timed, **k: _t(*a, **{**k, "spec": FAST}))
    for f in forms.dir.iterdir():
        if f.is_file():
            (tmp_path / f.name).symlink_to(f)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sf(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def refused(*args: str) -> str:
    """A user error: the command raises the error that ``main`` prints as one line with exit 2."""
    res = runner.invoke(app, list(args))
    assert res.exit_code != 0 and isinstance(res.exception, SlimforgeError), (res.output, res.exception)
    message = str(res.exception)
    assert "\n" not in message and "miniz" not in message and "Traceback" not in res.output
    return message


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    art = slimforge.load(path)
    return slimforge.open_session(art).run({art.io.input_names[0]: x})[0]


def reference(forms, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return forms.net(torch.from_numpy(x)).numpy()


def n_params(path: Path) -> int:
    return sum(p.numel() for p in slimforge.load(path).handle.parameters())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


ARCH = ["--arch", "formsnet:Net", "--weights", "net.pth", "--arch-kwargs", '{"classes": 4, "width": 32}']


@pytest.mark.parametrize("source", [ARCH, ["net.pt2"]], ids=["arch-weights", "pt2"])
def test_prune(cwd, forms, source):
    sf("prune", *source, "--ratio", "0.5", "-o", "pruned.pt2", *SHAPE)
    art = slimforge.load("pruned.pt2")
    assert art.format is Format.TORCH  # editable again: a second prune makes it smaller still
    assert n_params(cwd / "pruned.pt2") < 0.4 * forms.params
    assert outputs(cwd / "pruned.pt2", forms.x[:5]).shape == (5, 4)  # a batch it was not saved with
    sf("prune", "pruned.pt2", "--ratio", "0.5", "-o", "pruned2.pt2", "--batch", "1")
    assert n_params(cwd / "pruned2.pt2") < n_params(cwd / "pruned.pt2")


@pytest.mark.parametrize("source", [ARCH, ["net.pt2"]], ids=["arch-weights", "pt2"])
def test_fuse(cwd, forms, source):
    out = sf("fuse", *source, "-o", "fused.pt2", *SHAPE)
    assert "verify_fusion: pass" in out
    fused = slimforge.load("fused.pt2")
    assert not [m for m in fused.handle.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # both norms folded
    assert np.abs(outputs(cwd / "fused.pt2", forms.x[:6]) - reference(forms, forms.x[:6])).max() < 1e-4


@pytest.mark.parametrize("source", [ARCH, ["net.pt2"]], ids=["arch-weights", "pt2"])
def test_lowrank(cwd, forms, source):
    sf("lowrank", *source, "--ratio", "0.25", "--layers", "fc", "--layers", "conv2", "-o", "lr.pt2", *SHAPE)
    assert n_params(cwd / "lr.pt2") < forms.params - 4000
    assert cosine(outputs(cwd / "lr.pt2", forms.x[:8]), reference(forms, forms.x[:8])) > 0.5


@pytest.mark.parametrize("student", [["--student-arch", "formsnet:Net", "--student-weights", "small.pth",
                                      "--student-arch-kwargs", '{"width": 8}'], ["--student", "small.pt2"]],
                         ids=["arch-weights", "pt2"])
def test_distill(cwd, forms, student):
    torch.manual_seed(1)
    small = importlib.import_module("formsnet").Net(width=8).eval()
    torch.save(small.state_dict(), cwd / "small.pth")
    torch.export.save(torch.export.export(small, (torch.randn(2, 3, 16, 16),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), cwd / "small.pt2")
    sf("distill", "--teacher-arch", "formsnet:Net", "--teacher-weights", "net.pth", *student, "--data", "d.npz",
       "--epochs", "4", "--lr", "0.01", "-o", "distilled.pt2", *SHAPE)
    ref = reference(forms, forms.x)
    with torch.no_grad():
        before = float(((small(torch.from_numpy(forms.x)).numpy() - ref) ** 2).mean())
    after = float(((outputs(cwd / "distilled.pt2", forms.x) - ref) ** 2).mean())
    assert after < 0.5 * before, (before, after)  # the student learned the teacher's outputs


@pytest.mark.parametrize("command", ["prune", "fuse", "lowrank", "distill"])
def test_torchscript_and_a_lone_state_dict_are_refused_with_what_works(cwd, command):
    model = ["--student"] if command == "distill" else []
    extra = ["--teacher-arch", "formsnet:Net", "--teacher-weights", "net.pth", "--data", "d.npz", *SHAPE] \
        if command == "distill" else []
    line = refused(command, *model, "net.pt", *extra)
    assert f"{'distill trains the student' if command == 'distill' else command + ' edits'}" in line
    assert "net.pt does not allow" in line and "--arch package.module:Class" in line and ".pt2" in line
    line = refused(command, *model, "net.pth", *extra)
    assert "net.pth: a state dict" in line and "add --arch package.module:Class" in line


def _python_m(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(slimforge.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    env.pop("SLIMFORGE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "slimforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("file, says", [("net.pt", "give the model as --arch package.module:Class"),
                                        ("net.pth", "a state dict (")])
def test_refusals_are_one_line_and_exit_2(cwd, file, says):
    res = _python_m(cwd, "prune", file, "-o", "p.pt2")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], res.stderr
    assert "miniz" not in res.stderr and not (cwd / "p.pt2").exists()


def test_a_pickled_module_and_a_wrong_class_are_named(cwd, forms):
    torch.save(forms.net, cwd / "whole.pt")
    assert "pickled Python object" in refused("prune", "whole.pt")
    assert "formsnet has no Nett" in refused("prune", "--arch", "formsnet:Nett", "--weights", "net.pth", *SHAPE)
    line = refused("prune", "--arch", "formsnet:Net", "--weights", "net.pth", "--arch-kwargs", '{"width": 8}',
                   *SHAPE)
    assert "does not fit formsnet:Net" in line and "conv.weight (32, 3, 3, 3) vs (8, 3, 3, 3)" in line


def test_info_benchmark_and_export_take_arch_weights(cwd, forms):
    data = json.loads(sf("info", *ARCH, "--input-shape", "x:1x3x16x16", "--json"))
    assert data["parameters"] == forms.params
    sf("export", *ARCH, "--input-shape", "x:1x3x16x16", "-o", "net.onnx")
    assert np.abs(outputs(cwd / "net.onnx", forms.x[:3]) - reference(forms, forms.x[:3])).max() < 1e-4


def test_readme_chain_prune_distill_quantize_through_files(cwd, forms):
    """The README's chain on a small CNN: each command reads the file the one before wrote (the optimize step,
    a search, runs in the slow test below)."""
    sf("prune", *ARCH, "--ratio", "0.5", "--finetune-data", "d.npz", "-o", "pruned.pt2", *SHAPE)
    sf("distill", "--teacher-arch", "formsnet:Net", "--teacher-weights", "net.pth", "--student", "pruned.pt2",
       "--data", "d.npz", "--epochs", "3", "--lr", "0.01", "-o", "distilled.pt2", *SHAPE)
    sf("quantize", "distilled.pt2", "--method", "dynamic", "-o", "distilled-int8.onnx", "--batch", "1")
    ref = reference(forms, forms.x[:16])
    int8 = outputs(cwd / "distilled-int8.onnx", forms.x[:16])
    assert cosine(int8, outputs(cwd / "distilled.pt2", forms.x[:16])) > 0.99  # quantized from the distilled model
    assert cosine(int8, ref) > cosine(outputs(cwd / "pruned.pt2", forms.x[:16]), ref) - 0.05
    assert n_params(cwd / "distilled.pt2") < 0.4 * forms.params


@pytest.mark.slow
def test_readme_chain_ends_with_optimize(cwd, forms):
    test_readme_chain_prune_distill_quantize_through_files(cwd, forms)
    res = runner.invoke(app, ["optimize", "distilled-int8.onnx", "--target", "cpu", "--data", "d.npz",
                              "--time-budget", "20s", "-o", "out", "--batch", "1"])
    assert res.exit_code in (0, 3), (res.output, res.exception)  # 3: a goal missed, the best effort saved
    report = json.loads((cwd / "out" / "report.json").read_text())
    assert (cwd / "out" / "recipe.yaml").is_file() and report["candidates"]


def test_serve_refuses_a_model_it_cannot_load_in_one_line_before_listening(cwd):
    """The model is loaded before the server starts: a TorchScript file without shapes is one line and exit 2, not
    uvicorn's start-up traceback, and the server never announces itself."""
    res = _python_m(cwd, "serve", "net.pt", "--port", "8971")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "net.pt" in lines[0], res.stderr
    assert "serving" not in res.stderr
    assert "--input-shape" in lines[0]  # the fix it names exists on serve: given, the file serves
    env = {**os.environ, "PYTHONPATH": str(Path(slimforge.__file__).parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "slimforge", "serve", "net.pt", "--port", "8972",
                               "--input-shape", "x:1x3x32x32"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        import httpx

        for _ in range(120):
            try:
                meta = httpx.get("http://127.0.0.1:8972/v2/models/net", timeout=2).json()
                break
            except (httpx.HTTPError, ValueError):
                import time

                time.sleep(0.5)
        assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["shape"][1] == 3, meta
    finally:
        server.terminate()
        server.wait(30)
