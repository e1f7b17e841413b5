"""An optimize run leaves in its output folder only what was asked for (the artifact, its report, plots, recipe);
intermediate artifacts live in the cache, which ``slimforge cache list`` shows and ``cache clear`` empties. A
candidate whose method found nothing to quantize is rejected for that, not on speed."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

import slimforge
from slimforge.auto import auto_optimize
from slimforge.cli import app
from slimforge.plan.cache_admin import cache_entries

ASKED_FOR = re.compile(r"^(convnet-mobile\.onnx(\.slimforge\.json)?|report\.(json|html|csv)|recipe\.yaml|[a-z_]+\.png|"
                       r"\.slimforge-manifest\.json)$")


@pytest.fixture()
def convnet_onnx(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 10, 1),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    art = slimforge.load(net, example_inputs=torch.randn(2, 3, 16, 16), name="convnet")
    return slimforge.export(art, tmp_path / "src" / "convnet.onnx", workdir=tmp_path / "src").path


def test_optimize_leaves_only_what_was_asked_for_and_the_cache_holds_the_rest(convnet_onnx, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SLIMFORGE_CACHE_DIR", str(cache))
    out = tmp_path / "out"
    res = auto_optimize(convnet_onnx, target="mobile", output_dir=out, time_budget_s=30)
    names = sorted(p.name for p in out.iterdir())
    assert all(ASKED_FOR.match(n) for n in names), names
    assert "convnet-mobile.onnx" in names and "report.json" in names and not any(p.is_dir() for p in out.iterdir())
    # nothing to quantize for dynamic INT8 and int4 (no MatMul/Gemm): rejected with that reason, not on speed
    by_name = {c["name"]: c for c in res.report["candidates"]}
    for name in ("onnxruntime int8 dynamic", "onnxruntime int4 weights"):
        assert by_name[name]["status"] == "rejected", by_name[name]
        assert by_name[name]["reason"].startswith("nothing was quantized: "), by_name[name]["reason"]
        assert "slower" not in by_name[name]["reason"]
    kinds = {e.kind for e in cache_entries(cache)}
    assert {"steps", "measure", "optimized"} <= kinds, kinds

    (cache / "steps" / "notes.txt").write_text("mine")  # not slimforge's: listed never, removed never
    (cache / "mine").mkdir()
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.output)
    n = len(doc["entries"])
    assert n == len(cache_entries(cache)) and doc["total_bytes"] > 0 and doc["location"] == str(cache)
    assert all(e["name"] != "notes.txt" for e in doc["entries"])
    assert f"{n} entries" in runner.invoke(app, ["cache", "list"]).output
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and f"removed {n} entries" in cleared.output, cleared.output
    assert cache_entries(cache) == [] and (cache / "steps" / "notes.txt").is_file() and (cache / "mine").is_dir()
