"""Auto-optimization: targets, goals, the search (no slowdown, cache, best effort), the report, the CLI."""

import json
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import slimforge
from slimforge.auto import Goals, auto_optimize, get_target, load_optimized
from slimforge.auto.candidates import _PROPOSERS, candidate, proposer
from slimforge.auto.goals import assess, parse_amount
from slimforge.auto.targets import Machine, feasible
from slimforge.cli.app import app
from slimforge.errors import ConfigError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORGE_CACHE_DIR", str(tmp_path / "cache"))


def test_goals_absolute_relative_and_the_seed_shape():
    g = Goals.from_mapping({"inference_time": "50%", "memory_usage": "200MB", "accuracy": 0.97})
    assert g.max_latency_ms == "50%" and g.max_memory_mb == 200.0 and g.min_accuracy == 97.0
    base = {"latency": {1: {"p50": 10.0, "p95": 12.0, "p99": 13.0}}, "peak_memory_mb": 300.0, "size_mb": 40.0,
            "quality": {"accuracy": 98.0}}
    cand = {"latency": {1: {"p50": 6.0, "p95": 7.0, "p99": 9.0}}, "peak_memory_mb": 150.0, "size_mb": 10.0,
            "quality": {"accuracy": 96.5}}
    res = {r.name: r for r in assess(g, cand, base, 1)}
    assert res["latency p50 at batch 1"].target == 5.0 and not res["latency p50 at batch 1"].met
    assert res["latency p50 at batch 1"].margin == pytest.approx(-1.0)
    assert res["peak memory"].met and res["peak memory"].margin == pytest.approx(50.0)
    assert not res["accuracy"].met and "MISSED by 0.5" in res["accuracy"].describe()
    drop = assess(Goals(max_accuracy_drop="0.5%"), {"quality": {"cosine": 0.996}}, {"quality": {"cosine": 1.0}}, 1)
    assert drop[0].target == pytest.approx(0.995) and drop[0].met
    assert parse_amount("1.5s", "t") == 1500.0
    with pytest.raises(ConfigError, match="cannot read"):
        Goals(max_latency_ms="fast")
    with pytest.raises(ConfigError, match="unknown goal"):
        Goals.from_mapping({"latency_budget": 3})


def test_presets_user_yaml_and_machine_detection(tmp_path):
    assert {"cpu", "server", "edge", "mobile", "gpu"} <= set(slimforge.auto.PRESETS)
    preset = tmp_path / "kiosk.yaml"
    preset.write_text(yaml.safe_dump({"extends": "edge", "threads": 4, "goals": {"max_latency_ms": 20}}))
    t = get_target(preset)
    assert t.name == "kiosk" and t.threads == 4 and t.batch_sizes == (1,) and t.goals["max_latency_ms"] == 20
    (tmp_path / "bad.yaml").write_text("threads: 2\nspeed: max\n")
    with pytest.raises(ConfigError, match="unknown field"):
        get_target(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown target"):
        get_target("toaster")
    old = Machine(cpu="old", flags=("avx2",), cuda=False, cuda_name=None, fp8=False, runtimes=("onnxruntime",))
    narrowed, notes = feasible(get_target("cpu"), old)
    assert narrowed.runtimes == ("onnxruntime",) and "bf16" not in narrowed.precisions
    assert any("bf16 dropped" in n for n in notes) and any("openvino dropped" in n for n in notes)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        feasible(get_target("gpu"), old)


def _run_digits(digits, out, **kw):
    return auto_optimize(digits["torch"], target="cpu", goals={"max_accuracy_drop": 1.0}, data=digits["test"],
                         output_dir=out, time_budget_s=600, **kw)


def test_digits_search_finds_pruned_distilled_int8_never_slower_and_caches(digits, tmp_path):
    t0 = time.perf_counter()
    res = _run_digits(digits, tmp_path / "a")
    first = time.perf_counter() - t0
    rep = res.report
    names = {c["name"]: c for c in rep["candidates"]}
    chain = names["pruned 50% + distilled, onnxruntime int8 static"]
    assert chain["status"] in ("chosen", "accepted", "rejected") and chain["latency_ms"], chain
    assert [s["type"] for s in chain["steps"]][:2] == ["prune", "distill"] and chain["steps"][-1]["type"] == \
        "quantize_static"
    # search + distil + INT8: the architecture search's sub-network under half the latency, built and measured
    searched = names["searched sub-network + distilled, onnxruntime int8 static"]
    assert [s["type"] for s in searched["steps"]][:2] == ["subnet_search", "distill"], searched
    assert searched["status"] in ("chosen", "accepted", "rejected") and searched["latency_ms"], searched
    for c in rep["candidates"]:  # never a slowdown: no candidate that can win is slower than the baseline anywhere
        if c["status"] in ("chosen", "accepted"):  # (slower: the whole interval of its speedup below 1.0)
            assert all(r["verdict"] != "slower" and r["hi"] >= 1.0 for r in c["ratio"].values()), c
        if c["status"] == "rejected" and "slower than the baseline" in c["reason"]:
            assert "x [" in c["reason"] and " ms" in c["reason"]  # the timings it lost on are quoted
        assert c["status"] == "chosen" or c["reason"], c  # every loser says why
    assert res.goals_met and rep["chosen"] and res.paths["artifact"].exists()
    assert rep["verification"]["passed"] and (tmp_path / "a" / "pareto.png").stat().st_size > 10_000
    chosen = slimforge.load(res.paths["artifact"])
    acc = float((slimforge.open_session(chosen).run({chosen.io.input_names[0]: digits["data"]["x_test"]})[0].argmax(-1)
                 == digits["data"]["y_test"]).mean() * 100)
    assert acc >= rep["baseline"]["quality"]["accuracy"] - 1.5
    assert "data split" in " ".join(rep["notes"])
    # same request again: from the registry, at least 5x faster, same artifact
    t0 = time.perf_counter()
    again = _run_digits(digits, tmp_path / "b")
    assert again.from_cache and time.perf_counter() - t0 < first / 5
    assert again.report["chosen"]["name"] == rep["chosen"]["name"]
    art = load_optimized(digits["torch"], target="cpu", goals={"max_accuracy_drop": 1.0}, data=digits["test"],
                         time_budget_s=600, output_dir=tmp_path / "c")
    assert art.format == chosen.format
    # the recipe re-runs
    recipe = yaml.safe_load((tmp_path / "a" / "recipe.yaml").read_text())
    assert recipe["steps"] == chain["steps"] or recipe["steps"] == rep["recipe"]["steps"]


def test_impossible_goal_saves_best_effort_names_misses_and_exits_3(digits, tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(app, ["optimize", str(digits["onnx"].path), "--target", "cpu", "--max-latency-ms", "0.0001",
                              "--data", str(digits["test"]), "--time-budget", "5m", "-o", str(out)])
    assert res.exit_code == 3, res.output
    rep = json.loads((out / "report.json").read_text())
    assert not rep["goals_met"]
    missed = [g for g in rep["goal_results"] if not g["met"]]
    assert missed and missed[0]["name"].startswith("latency") and missed[0]["margin"] < 0
    assert "MISSED by" in res.output and "goals not met" in res.output
    assert (out / "digits-cpu.onnx").is_file()  # the best effort is saved (the winner, or the original)
    assert rep["chosen"] is not None or "no gain on this target" in " ".join(rep["notes"])
    rerun = runner.invoke(app, ["run", str(out / "recipe.yaml"), "-o", str(tmp_path / "rerun")])
    if rep["chosen"] is not None:  # the recipe re-makes the chosen artifact from the recorded source model
        assert rerun.exit_code == 0, rerun.output
        assert any((tmp_path / "rerun").glob("*-optimized.*"))
    else:
        assert "no steps" in str(rerun.exception or rerun.output)


def test_onnx_without_data_skips_what_needs_data_and_a_new_proposer_joins(mlp_onnx, tmp_path):
    from slimforge.convert.optimize import GraphOptConfig

    @proposer
    def extra(space):
        yield candidate("onnxruntime fp32, extended graph passes", (GraphOptConfig(ort_level="extended"),),
                        "onnxruntime", "fp32", cost=1)

    try:
        res = auto_optimize(mlp_onnx, target="edge", output_dir=tmp_path / "out", time_budget_s=300)
    finally:
        _PROPOSERS.remove(extra)
    names = {c["name"]: c for c in res.report["candidates"]}
    assert "onnxruntime fp32, extended graph passes" in names
    assert names["onnxruntime fp32, extended graph passes"]["latency_ms"]
    static = [c for c in res.report["candidates"] if "static" in c["name"]]
    assert static and all(c["latency_ms"] for c in static)  # calibrated on synthesised inputs, then measured
    assert any("synthesised from the input names" in n for n in res.report["notes"])
    assert res.report["target"]["threads"] == 2 and list(res.report["baseline"]["latency_ms"]) == ["1"]


def test_bad_inputs_give_clear_errors(mlp_onnx, tmp_path):
    res = runner.invoke(app, ["optimize", str(mlp_onnx), "--target", "toaster", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "unknown target" in str(res.exception or res.output)
    with pytest.raises(ConfigError, match="time budget"):
        auto_optimize(mlp_onnx, target="cpu", time_budget_s=0, output_dir=tmp_path / "out")
    res = runner.invoke(app, ["optimize", str(mlp_onnx), "--target", "cpu", "--time-budget", "soon"])
    assert "time-budget" in str(res.exception or res.output)


def test_seed_shape_is_expressible(mlp_onnx, tmp_path):
    res = slimforge.auto_optimize_for_deployment("mobile", str(mlp_onnx),
                                                 {"inference_time": 1000, "memory_usage": 4000, "accuracy": 0.9},
                                                 output_dir=tmp_path / "out", time_budget_s=300)
    names = {g["name"] for g in res.goal_results}
    assert {"latency p50 at batch 1", "peak memory"} <= names and any(n.startswith("accuracy") for n in names)
    assert res.report["target"]["threads"] == 1
    assert np.isfinite(res.report["baseline"]["latency_ms"]["1"]["p50"])


def test_no_slowdown_rule_is_applied_again_to_every_accepted_candidate_after_the_runoff():
    from slimforge.auto.evaluate import Evaluated
    from slimforge.auto.select import apply_no_slowdown
    from slimforge.bench import Ratio

    def ev(name, ratios, runoff):
        e = Evaluated(candidate(name, (), "onnxruntime"))
        e.status, e.runoff = "accepted", runoff
        e.latency = {b: {"p50": 1.0} for b in (1, 32)}
        e.ratio = {b: Ratio(*r) for b, r in zip((1, 32), ratios)}
        return e

    # (speedup, lo, hi) over the baseline: slower only when the whole interval is below 1.0
    finalist_ok, finalist_slow = ev("a", ((2.0, 1.9, 2.1), (2.0, 1.8, 2.2)), True), \
        ev("b", ((1.1, 1.0, 1.2), (0.95, 0.93, 0.97)), True)
    straggler_tie, straggler_slow = ev("c", ((0.97, 0.9, 1.05), (1.0, 0.95, 1.05)), False), \
        ev("d", ((0.8, 0.7, 0.9), (1.2, 1.1, 1.3)), False)
    apply_no_slowdown([finalist_ok, finalist_slow, straggler_tie, straggler_slow])
    assert [e.status for e in (finalist_ok, finalist_slow, straggler_tie, straggler_slow)] == \
        ["accepted", "rejected", "accepted", "rejected"]
    assert finalist_slow.reason.startswith("slower than the baseline when timed side by side at batch 32")
    assert "0.95x [0.93, 0.97]" in finalist_slow.reason
    assert "(timed alone)" in straggler_slow.reason and "0.80x [0.70, 0.90]" in straggler_slow.reason


def test_ties_inside_the_noise_go_to_the_smaller_then_simpler_candidate():
    from slimforge.auto.evaluate import Evaluated
    from slimforge.auto.select import choose
    from slimforge.bench import Ratio
    from slimforge.convert.optimize import GraphOptConfig

    def ev(name, ratio, size, steps=(), precision="fp32"):
        e = Evaluated(candidate(name, steps, "onnxruntime", precision))
        e.status, e.size_mb = "accepted", size
        e.ratio = {1: Ratio(*ratio)}
        return e

    fast_big = ev("fp32", (2.05, 1.9, 2.2), 90.0)
    tied_small = ev("int8", (2.0, 1.85, 2.15), 23.0)
    clearly_slower_smaller = ev("int4", (1.3, 1.2, 1.4), 15.0)
    assert choose([fast_big, tied_small, clearly_slower_smaller]) is tied_small
    plain, with_pass = ev("plain", (2.0, 1.9, 2.1), 23.0), ev("pass", (2.02, 1.9, 2.1), 23.0, (GraphOptConfig(),))
    assert choose([with_pass, plain]) is plain
    # same size and steps, tied: bf16 before fp16 (no overflow); a measurably faster fp16 still wins
    fp16, bf16 = ev("fp16", (8.2, 8.0, 8.7), 170.0, (), "fp16"), ev("bf16", (8.1, 7.9, 8.5), 170.0, (), "bf16")
    assert choose([fp16, bf16]) is bf16
    slow_bf16 = ev("bf16", (6.0, 5.8, 6.2), 170.0, (), "bf16")
    assert choose([fp16, slow_bf16]) is fp16
