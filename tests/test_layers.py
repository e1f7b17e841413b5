"""The architecture, checked: the import-linter layers (and a planted upward import that they must catch), no
import cycles, no private names imported across packages, small modules and functions, one caller of the
registry's ``apply``."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "slimforge"
ROOT = SRC.parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, ".".join(path.relative_to(SRC.parent).with_suffix("").parts)


def _lint(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(extra_path) if extra_path else ""}
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def test_layers_contract_is_kept():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_a_planted_upward_import_breaks_the_contract(tmp_path):
    copy = tmp_path / "src" / "slimforge"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = copy / "core" / "artifact.py"
    target.write_text(target.read_text() + "\n\ndef _upward():\n    from slimforge.cli.app import app  # noqa\n")
    res = _lint(tmp_path, tmp_path / "src")
    assert res.returncode != 0, res.stdout[-2000:]
    assert "BROKEN" in res.stdout and "slimforge.core.artifact -> slimforge.cli.app" in res.stdout


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    g = grimp.build_graph("slimforge")
    adj = {m: [i for i in g.find_modules_directly_imported_by(m) if i != "slimforge"] for m in g.modules}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in sorted(adj):
        if m not in index:
            visit(m)
    assert not cycles, cycles


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_private_name_is_imported_from_another_package():
    found = []
    for path, module in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slimforge"):
                if _package(node.module) == _package(module):
                    continue
                bad = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                bad += [p for p in node.module.split(".") if p.startswith("_") and p != "__init__"]
                if bad:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module} {bad}")
    assert not found, found


ENGINE = ("slimforge.plan", "slimforge.auto", "slimforge.bench", "slimforge.report", "slimforge.api",
          "slimforge.compress")


def test_modules_and_functions_are_small():
    """No module over 400 lines; in the engine's packages, no function over 80."""
    long_modules, long_functions = [], []
    for path, module in _modules():
        text = path.read_text()
        if text.count("\n") > 400:
            long_modules.append((str(path.relative_to(ROOT)), text.count("\n")))
        if not module.startswith(ENGINE):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_functions.append((f"{path.relative_to(ROOT)}:{node.name}", n))
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_the_registry_apply_has_one_caller():
    callers = []
    for path, module in _modules():
        tree = ast.parse(path.read_text())
        imported = any(isinstance(n, ast.ImportFrom) and n.module == "slimforge.core.registry"
                       and any(a.name == "apply" for a in n.names) for n in ast.walk(tree))
        if imported:
            callers.append(module)
    assert callers == ["slimforge.plan.engine"], callers
