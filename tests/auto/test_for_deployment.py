"""``auto_optimize_for_deployment`` takes an ``nn.Module`` with its ``example_inputs`` (#13); the search itself is
covered by the planner's tests, so here it is replaced by a stand-in that records what it was given."""

import pytest
import torch

import slimforge
import slimforge.auto
from slimforge.core.artifact import Format


def test_a_module_with_example_inputs_reaches_the_search(monkeypatch):
    seen = {}
    monkeypatch.setattr(slimforge.auto, "auto_optimize", lambda model, **kw: seen.update(model=model, **kw) or "res")
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    res = slimforge.auto_optimize_for_deployment("edge", net, {"inference_time": 10, "memory_usage": 200},
                                                 example_inputs=torch.randn(3, 16), time_budget_s=5)
    assert res == "res" and seen["target"] == "edge" and seen["time_budget_s"] == 5
    art = seen["model"]
    assert art.format is Format.TORCH and art.handle is net and art.examples["input"].shape == (3, 16)
    assert art.io.outputs[0].shape == ("batch", 4)
    goals = seen["goals"].to_dict()  # the seed's thresholds, as goals
    assert goals["max_latency_ms"] == 10.0 and goals["max_memory_mb"] == 200.0


def test_a_module_without_example_inputs_says_what_to_pass():
    net = torch.nn.Linear(4, 2)
    with pytest.raises(slimforge.ConfigError, match="pass example_inputs"):
        slimforge.auto_optimize_for_deployment("edge", net, {"inference_time": 10})
