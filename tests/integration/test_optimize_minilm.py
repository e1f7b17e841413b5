"""The main job end to end on the bundled MiniLM: export -> verify -> graph-optimise -> INT8 -> verify -> report."""

import json

import slimforge
from slimforge.bench.timing import BenchSpec


def test_optimize_minilm_default(tmp_path, minilm):
    res = slimforge.optimize(minilm, output_dir=tmp_path, spec=BenchSpec(warmup=1, repeats=3, min_time_s=0, rounds=3, max_rounds=4),
                             eval_limit=200)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in report["lineage"]] == ["export_onnx", "graph_optimize", "quantize_dynamic"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["quant_fidelity"]["passed"] and checks["quant_fidelity"]["metrics"]["cosine"] > 0.98
    # every step's own verification is in the report, attributed to its step
    assert checks["verify_onnx_export"]["step_name"] == "export_onnx"
    assert checks["verify_onnx_export"]["metrics"]["max_abs"] <= 1e-4 and checks["verify_onnx_export"]["metrics"]["cases"] == 4
    assert checks["quant_fidelity"]["step_name"] == "quantize_dynamic"
    assert any(c["step_name"] == "graph_optimize" for c in report["checks"])
    for side in ("baseline", "result"):
        for b in ("1", "32"):
            assert report[side]["latency_ms"][b]["p99"] >= report[side]["latency_ms"][b]["p50"] > 0
        assert report[side]["peak_memory_mb"] > 0
    q = report["result"]["quality"]
    assert 0.98 < q["cosine"] < 1.0 and q["top10_agreement"] > 0.8
    assert report["baseline"]["quality"]["cosine"] > 0.9999
    assert report["result"]["size_mb"] < report["baseline"]["size_mb"] / 3
    assert report["data"]["name"] == "sentences.txt" and report["data"]["evaluated"] == 200
    for name in ("report.csv", "report.html", "latency.png", "size.png", "latency_vs_quality.png", "recipe.yaml"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert res.artifact.path.exists() and res.artifact.path.parent == tmp_path
    # the recipe written beside the report re-runs as it is
    recipe = slimforge.Recipe.load(tmp_path / "recipe.yaml")
    assert [s.kind for s in recipe.steps] == ["export_onnx", "graph_optimize", "quantize_dynamic"]
