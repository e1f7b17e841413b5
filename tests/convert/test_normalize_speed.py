"""Normalisation never costs speed: a pass whose graph is slower on a runtime the model runs on is dropped, and the
graph before it goes on (measured side by side); a pass that costs nothing is kept."""

import numpy as np
import onnx
from onnx import helper, numpy_helper

import slimforge
from slimforge.convert import normalize as normalize_mod
from slimforge.convert.normalize import NormalizeConfig
from slimforge.core.context import RunContext
from slimforge.core.registry import apply
from tests import foreign


def _slow_but_equal(onnx_mod, src, dst):
    """A fold_constants pass that verifies (outputs move by ~1e-30) but adds a chain of 16 wide 32-channel convolutions
    on the input, several times the model's own work: the kind of graph a normaliser must not hand on, slower by far
    more than any noise on a shared machine."""
    m = onnx.load(str(src))
    g = m.graph
    x = g.input[0].name
    rng = np.random.default_rng(0)
    g.initializer.append(numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.2, "slow_w0"))
    g.initializer.append(numpy_helper.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.05,
                                                 "slow_w"))
    g.node.append(helper.make_node("Conv", [x, "slow_w0"], ["slow_in"], name="SlowConvIn", pads=[1, 1, 1, 1]))
    prev = "slow_in"
    for i in range(16):
        out = f"slow_{i}"
        g.node.append(helper.make_node("Conv", [prev, "slow_w"], [out], name=f"SlowConv_{i}", pads=[1, 1, 1, 1]))
        prev = out
    g.initializer.append(numpy_helper.from_array(np.array(1e-30, np.float32), "tiny"))
    g.node.append(helper.make_node("ReduceMean", [prev], ["slow_mean"], name="SlowMean", keepdims=0, axes=[1, 2, 3]))
    g.node.append(helper.make_node("Mul", ["slow_mean", "tiny"], ["slow_scaled"], name="SlowScale"))
    g.node.append(helper.make_node("Unsqueeze", ["slow_scaled", "unsq_axes"], ["slow_col"], name="SlowUnsq"))
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "unsq_axes"))
    out_name = g.output[0].name
    for n in g.node:
        for i, name in enumerate(n.output):
            if name == out_name:
                n.output[i] = "pre_out"
    g.node.append(helper.make_node("Add", ["pre_out", "slow_col"], [out_name], name="SlowAdd"))
    onnx.save(m, str(dst))


def test_a_pass_that_slows_the_model_is_dropped_and_the_original_graph_goes_on(tmp_path, monkeypatch):
    src = foreign.cnn(tmp_path / "cnn.onnx")
    monkeypatch.setattr(normalize_mod, "_constants_to_initializers", _slow_but_equal)
    art = slimforge.load(src)
    out = apply(art, NormalizeConfig(runtimes=("onnxruntime",)), RunContext(workdir=tmp_path / "w"))
    checks = {c.name: c for c in out.checks}
    assert checks["verify_fold_constants"].passed  # it verifies: only the speed gate can drop it
    gate = checks["speed_fold_constants"]
    assert not gate.passed and gate.metrics["onnxruntime_speedup_hi"] < 0.98, gate
    assert "fold_constants" not in out.meta["normalized"]
    assert not any(n.name.startswith("Slow") for n in onnx.load(str(out.path)).graph.node)


def test_a_pass_that_costs_nothing_is_kept(tmp_path):
    src = foreign.constant_weights(foreign.cnn(tmp_path / "cnn.onnx"), tmp_path / "const.onnx")
    out = apply(slimforge.load(src), NormalizeConfig(runtimes=("onnxruntime",)), RunContext(workdir=tmp_path / "w"))
    checks = {c.name: c for c in out.checks}
    assert "fold_constants" in out.meta["normalized"], checks
    assert checks["speed_fold_constants"].passed and "onnxruntime_speedup" in checks["speed_fold_constants"].metrics
