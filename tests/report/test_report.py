import csv
import json

import pytest

import slimforge
from slimforge.bench import BenchResult, Timing
from slimforge.evaluation.metrics import Metric
from slimforge.report import SCHEMA_VERSION, build_report, variant_entry, write_report


def _bench(name, p50s):
    r = BenchResult(name, "onnxruntime", "cpu", 2, peak_memory_mb=12.5, memory_method="subprocess")
    for b, p in p50s.items():
        r.latency_ms[b] = Timing(p, p * 1.1, p * 1.2, p, p * 0.9, 20)
        r.throughput[b] = b / (p / 1000)
    return r


def test_report_document_and_files(mlp_art, mlp_onnx, tmp_path):
    onnx_art = slimforge.load(mlp_onnx)
    base = variant_entry("PyTorch FP32", mlp_art, _bench("b", {1: 2.0, 32: 20.0}), {"accuracy": Metric(90.0, "%")})
    res = variant_entry("optimized", onnx_art, _bench("r", {1: 1.0, 32: 5.0}),
                        {"accuracy": Metric(89.5, "%"), "sqnr_db": Metric(float("inf"), "dB")})
    report = build_report(baseline=base, result=res, artifact=onnx_art, recipe={"steps": []}, threads=2)
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["comparison"]["speedup_p50"] == {"1": 2.0, "32": 4.0}
    for side in ("baseline", "result"):
        entry = report[side]
        assert set(entry["latency_ms"]["32"]) >= {"p50", "p95", "p99"}
        for key in ("throughput", "peak_memory_mb", "size_mb", "quality"):
            assert key in entry
    env = report["environment"]
    assert env["threads"] == 2 and "flags" in env["cpu"] and "torch" in env["libraries"]

    paths = write_report(report, tmp_path / "rep")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["result"]["quality"]["sqnr_db"] == "inf"
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"PyTorch FP32", "optimized"}
    assert float([r for r in rows if r["variant"] == "optimized" and r["batch"] == "32"][0]["p50_ms"]) == 5.0
    for key in ("plot_latency", "plot_size", "plot_tradeoff"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["html"].read_text()
    assert "latency.png" in html and "batch 32: 4.0x" in html
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.mark.parametrize("bad", [{"steps": "x"}, {"version": 99, "steps": []}])
def test_bad_recipe_documents(bad):
    with pytest.raises(slimforge.ConfigError):
        slimforge.Recipe.from_dict(bad)
