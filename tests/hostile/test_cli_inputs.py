"""Hostile model files, data and flags: each gets one clear line (or typer's usage line) and exit 2, never a
traceback; inputs stay as they were and nothing is left behind (checked by the ``ws`` fixture)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.hostile.conftest import one_line_error, usage_error

# ---------------------------------------------------------------- model files


@pytest.mark.parametrize("name, content, says", [
    ("empty.onnx", b"", "empty.onnx"),
    ("random.onnx", os.urandom(3000), "random.onnx"),
    ("text.onnx", "this is not a model\n" * 20, "text.onnx"),
    ("weird.xyz", b"abc", "unknown model file type"),
    ("garbage.pt", os.urandom(2000), "garbage.pt"),
    ("lonely.xml", "<net name='x'></net>", "lonely.bin"),
])
def test_bad_model_files(ws, name, content, says):
    ws.add(name, content)
    one_line_error(ws.sf("info", name), says=says)


def test_truncated_onnx(ws, mlp_onnx_bytes):
    ws.add("half.onnx", mlp_onnx_bytes[: len(mlp_onnx_bytes) // 2])
    one_line_error(ws.sf("quantize", "half.onnx", "-o", "out/q.onnx"), says="half.onnx")
    assert not (ws.root / "out").exists()


def test_missing_model_and_markup_in_the_path(ws):
    one_line_error(ws.sf("info", "nope/[/x]/[batch, 16].onnx"), says="nope/[/x]/[batch, 16].onnx")


def test_model_with_zero_outputs(ws):
    import onnx

    m = onnx.load(str(ws.root / "model.onnx"))
    del m.graph.output[:]
    onnx.save(m, str(ws.root / "noout.onnx"))
    ws.inputs[ws.root / "noout.onnx"] = __import__("tests.hostile.conftest", fromlist=["_digest"])._digest(
        ws.root / "noout.onnx")
    one_line_error(ws.sf("quantize", "noout.onnx", "-o", "q.onnx"), says="no outputs")


def test_a_folder_that_is_no_model(ws):
    (ws.root / "empty-folder").mkdir()
    one_line_error(ws.sf("info", "empty-folder"), says="empty-folder")


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("array, says", [
    (np.array([["a"] * 16] * 4), "<U1"),
    (np.ones((4, 16), np.complex64), "complex64"),
    (np.ones((4, 16), np.int64), "int64"),
    (np.ones((4, 16, 2), np.float32), "3 dimensions"),
    (np.ones((4, 15), np.float32), "has 15 on axis 1"),
    (np.where(np.eye(4, 16) > 0, np.nan, 1).astype(np.float32), "NaN"),
    (np.full((4, 16), np.inf, np.float32), "NaN/Inf"),
    (np.ones((0, 16), np.float32), "no examples"),
])
def test_bad_calibration_arrays(ws, array, says):
    ws.npz("bad.npz", x=array)
    one_line_error(ws.sf("quantize", "model.onnx", "--method", "static", "--data", "bad.npz", "-o", "q.onnx"),
                   says=("bad.npz", says))
    assert not (ws.root / "q.onnx").exists()


def test_npz_with_names_the_model_does_not_have(ws):
    ws.npz("named.npz", a=np.ones((4, 16), np.float32), b=np.ones((4, 16), np.float32))
    one_line_error(ws.sf("quantize", "model.onnx", "--method", "static", "--data", "named.npz"),
                   says=("named.npz", "needs ['x']"))


@pytest.mark.parametrize("text, says", [
    ("f" + ",f".join(map(str, range(16))) + "\n" + ",".join(["1"] * 15 + ["nan"]) + "\n", "NaN/Inf"),
    ("a,b\n1,x\n", "non-numeric"),
    (",".join(f"f{i}" for i in range(15)) + "\n" + ",".join(["1"] * 15) + "\n", "needs 16"),
    ("", "empty"),
    ("a,b,c\n", "no rows"),
])
def test_bad_csv(ws, text, says):
    ws.add("bad.csv", text)
    one_line_error(ws.sf("quantize", "model.onnx", "--method", "static", "--data", "bad.csv", "-o", "q.onnx"),
                   says=("bad.csv", says))


@pytest.mark.parametrize("name, content, says", [
    ("missing.npz", None, "no such file"),
    ("data.parquet", b"PAR1", "unknown data type"),
    ("sentences.txt", "a sentence\n", "text needs a text model"),
])
def test_data_the_model_cannot_take(ws, name, content, says):
    if content is not None:
        ws.add(name, content)
    one_line_error(ws.sf("quantize", "model.onnx", "--method", "static", "--data", name), says=says)


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize("args, says", [
    ((), "COMMAND"),
    (("frobnicate",), "No such command"),
    (("quantize", "--bogus"), "No such option"),
    (("benchmark", "model.onnx", "--threads", "abc"), "--threads"),
    (("prune", "--ratio", "half"), "--ratio"),
    (("distill", "--student", "layers:2"), "--data"),
    (("serve",), "Missing argument"),
])
def test_usage_errors(ws, args, says):
    usage_error(ws.sf(*args), says=says)


@pytest.mark.parametrize("args, says", [
    (("benchmark", "model.onnx", "--batch", "0"), "--batch"),
    (("benchmark", "model.onnx", "--batch", "one"), "--batch"),
    (("quantize", "model.onnx", "--method", "int3"), "int3"),
    (("quantize", "model.onnx", "--method", "static", "--calibration", "magic", "--data", "calib.npz"), "magic"),
    (("quantize", "model.onnx", "--runtime", "tensorflow"), "tensorflow"),
    (("optimize", "model.onnx", "--target", "toaster"), "toaster"),
    (("optimize", "model.onnx", "--target", "cpu", "--time-budget", "soon"), "--time-budget"),
    (("serve", "model.onnx", "--long-text", "shorten"), "--long-text"),
])
def test_bad_flag_values(ws, args, says):
    one_line_error(ws.sf(*args), says=says)


@pytest.mark.parametrize("recipe, says", [
    ("steps:\n- type: quantize_dynamic\n  per_channel: maybe\n", "per_channel"),
    ("steps:\n- type: quantize_dynamic\n  include_conv: 3\n", "include_conv"),
    ("steps:\n- type: shrink_ray\n", "unknown step type"),
    ("steps: [\n", "not valid YAML"),
    ("runtime: onnxruntime\nbaseline_runtime: torch\nsteps:\n- type: quantize_dynamic\n", "baseline_runtime"),
    ("runtime: tensorflow\nsteps:\n- type: quantize_dynamic\n", "tensorflow"),
])
def test_bad_recipes_fail_before_any_work(ws, recipe, says):
    ws.add("r.yaml", recipe)
    one_line_error(ws.sf("optimize", "model.onnx", "--recipe", "r.yaml", "-o", "out"), says=says)
    assert not (ws.root / "out").exists()
