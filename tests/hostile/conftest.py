"""The hostile corpus: bad inputs and faults, tried as a user would, from a fresh process.

Every CLI case runs ``python -m slimforge`` in a workspace of its own with its own ``TMPDIR``. The ``ws`` fixture
checks after each case that the input files are unchanged and that no slimforge scratch or temporary folder is left
anywhere in the workspace or its temp folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

LEFTOVER_PATTERNS = ("slimforge-run-*", ".slimforge-tmp-*", "slimforge-calib-*", "slimforge-mixed-*",
                     "slimforge-mem-*", "tmp-normalize", "*-*-*-*-*.data", "pre.quant.*")


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


@dataclass
class Workspace:
    root: Path
    tmp: Path
    inputs: dict[Path, str] = field(default_factory=dict)

    def sf(self, *args: str, timeout: float = 240, cwd: Path | None = None) -> Run:
        env = {**os.environ, "TMPDIR": str(self.tmp), "COLUMNS": "200",
               "SLIMFORGE_CACHE_DIR": str(self.root / ".cache")}
        env.pop("SLIMFORGE_DEBUG", None)
        p = subprocess.run([sys.executable, "-m", "slimforge", *args], cwd=cwd or self.root, env=env,
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return Run(p.returncode, p.stdout, p.stderr)

    def popen(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, "TMPDIR": str(self.tmp), "SLIMFORGE_CACHE_DIR": str(self.root / ".cache")}
        return subprocess.Popen([sys.executable, "-m", "slimforge", *args], cwd=self.root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def add(self, name: str, content: bytes | str) -> Path:
        """An input file of the case: checked unchanged afterwards."""
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        self.inputs[p] = _digest(p)
        return p

    def npz(self, name: str, **arrays: np.ndarray) -> Path:
        p = self.root / name
        np.savez(p, **arrays)
        self.inputs[p] = _digest(p)
        return p

    def leftovers(self) -> list[Path]:
        found = []
        for base in (self.root, self.tmp):
            for pat in LEFTOVER_PATTERNS:
                found += [p for p in base.rglob(pat) if ".cache" not in p.parts]
        return found


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _progress(line: str) -> bool:
    """A progress bar's final line (rich draws them on stderr), not a message."""
    import re

    return "━" in line or "╸" in line or re.search(r"\d+/\d+ +\d+:\d\d:\d\d$", line) is not None


def one_line_error(run: Run, code: int = 2, *, says: str | tuple[str, ...] = ()) -> str:
    """Exit ``code``, no traceback, exactly one non-empty line on stderr, naming what it should."""
    assert "Traceback" not in run.err + run.out, run.err[-2000:]
    assert run.rc == code, (run.rc, run.err[-2000:])
    errors = [ln for ln in run.lines if not _progress(ln)]
    assert len(errors) == 1, run.err
    line = errors[0]
    assert line.startswith("error: "), line
    for s in (says,) if isinstance(says, str) else says:
        assert s in line, (s, line)
    return line


def usage_error(run: Run, *, says: str = "") -> None:
    """Typer's usage line, exit 2, no traceback."""
    assert "Traceback" not in run.err + run.out, run.err[-2000:]
    assert run.rc == 2, (run.rc, run.err[-2000:])
    text = run.err + run.out
    assert "Usage: " in text and says in text, text


@pytest.fixture(scope="session")
def mlp_onnx_bytes(tmp_path_factory) -> bytes:
    """A small MLP as ONNX ([batch, 16] float32 -> [batch, 4]), exported once."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    p = tmp_path_factory.mktemp("hostile-model") / "model.onnx"
    torch.onnx.export(m, (torch.randn(1, 16),), str(p), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return p.read_bytes()


@pytest.fixture()
def ws(tmp_path, mlp_onnx_bytes) -> Workspace:
    root = tmp_path / "ws"
    tmp = tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    w = Workspace(root, tmp)
    w.add("model.onnx", mlp_onnx_bytes)
    w.npz("calib.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    yield w
    changed = [str(p) for p, d in w.inputs.items() if not p.exists() or _digest(p) != d]
    assert not changed, f"input files changed or removed: {changed}"
    left = w.leftovers()
    assert not left, f"left behind: {left}"
    shutil.rmtree(tmp_path, ignore_errors=True)
