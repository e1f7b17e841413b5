"""Accuracy-aware mixed precision keeps the fewest layers in float that meet the budget, and names them."""

import pytest

import slimforge


def _q(digits, tmp_path, **kw):
    return slimforge.quantize(digits["onnx"], kw.pop("method", "static"), data=digits["calib"], workdir=tmp_path,
                              check_speed=False, **kw)


def test_within_budget_keeps_nothing_in_float(digits, tmp_path):
    q = _q(digits, tmp_path, max_drop=1.0)  # accuracy points: labelled data
    check = q.checks[-1]
    assert check.name == "mixed_precision" and check.passed
    assert q.meta["float_layers"] == [] and check.metrics["float_layers"] == 0
    assert "fp32_accuracy" in check.metrics


def test_tight_budget_finds_the_fewest_float_layers(digits, tmp_path):
    loose = _q(digits, tmp_path / "a", max_drop=1.0, metric="cosine")
    all_quantized_drop = loose.checks[-1].metrics["drop_all_quantized"]
    budget = all_quantized_drop / 3  # force the search
    q = _q(digits, tmp_path / "b", max_drop=budget, metric="cosine")
    check = q.checks[-1]
    k = int(check.metrics["float_layers"])
    assert 1 <= k < check.metrics["float_layers"] + check.metrics["quantized_layers"]
    assert check.metrics["drop"] <= budget
    assert q.meta["float_layers"] == [s["layer"] for s in q.meta["sensitivity"][:k]]
    assert all(name in check.detail for name in q.meta["float_layers"])
    # the result really has those layers in float: evaluating it reproduces the recorded drop
    ref = slimforge.evaluate(q, digits["calib"], reference=digits["onnx"], limit=256)
    assert 1 - ref["cosine"].value == pytest.approx(check.metrics["drop"], abs=1e-6)


def test_unreachable_budget_says_so(digits, tmp_path):
    with pytest.raises(slimforge.TechniqueFailed, match="could not meet the budget"):
        slimforge.core.registry.apply(
            digits["onnx"],
            slimforge.core.config.Config.from_dict({"type": "mixed_precision", "max_drop": 0.0, "metric": "cosine",
                                                    "max_float_layers": 1, "base": "dynamic"}),
            slimforge.RunContext(workdir=tmp_path, calibration_data=slimforge.load_data(digits["calib"],
                                                                                        digits["onnx"])))


def test_budget_only_for_int8_on_onnxruntime(digits, tmp_path):
    with pytest.raises(slimforge.UnsupportedModelError, match="max_drop"):
        _q(digits, tmp_path, method="fp16", max_drop=1.0)
