"""Bad input gives a clear error naming the file and the problem, and leaves no partial output."""

import numpy as np
import pytest
import torch

import slimforge
from slimforge.cli.app import app  # noqa: F401  (the CLI must import cleanly)


def test_missing_file(tmp_path):
    with pytest.raises(slimforge.ModelLoadError, match=r"nope\.onnx: no such file"):
        slimforge.load(tmp_path / "nope.onnx")


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage-not-protobuf" * 50)
    with pytest.raises(slimforge.ModelLoadError, match=r"corrupt\.onnx: not a valid ONNX model"):
        slimforge.load(bad)


def test_truncated_onnx(tmp_path, mlp_onnx):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp_onnx.read_bytes()[: mlp_onnx.stat().st_size // 2])
    with pytest.raises(slimforge.ModelLoadError, match=r"cut\.onnx"):
        slimforge.load(cut)


def test_truncated_torchscript(tmp_path, mlp):
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.trace(mlp.eval(), torch.randn(1, 16)), good)
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(slimforge.ModelLoadError, match=r"truncated\.pt: cannot be read as TorchScript"):
        slimforge.load(cut, example_inputs=torch.randn(1, 16))


@pytest.mark.parametrize("spec, match", [
    ("1x16x3", r"has 3 dimensions, but input '\S+' has 2 .*give all 2 dimensions"),
    ("1x15", r"sets dimension 1 to 15, but input '\S+' fixes it at 16"),
])
def test_input_shape_of_wrong_rank_or_fixed_dim(mlp_onnx, spec, match):
    name = slimforge.load(mlp_onnx).io.input_names[0]
    with pytest.raises(slimforge.ConfigError, match=match):
        slimforge.load(mlp_onnx, input_shapes={name: tuple(int(d) for d in spec.split("x"))})
    assert slimforge.load(mlp_onnx, input_shapes={name: (3, 16)}).examples[name].shape == (3, 16)


def test_empty_and_unknown_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.touch()
    with pytest.raises(slimforge.ModelLoadError, match="empty"):
        slimforge.load(empty)
    odd = tmp_path / "model.xyz"
    odd.write_text("x")
    with pytest.raises(slimforge.UnsupportedModelError, match=r"unknown model file type '\.xyz'"):
        slimforge.load(odd)


@pytest.mark.parametrize("feeds, match", [
    ({"input": np.zeros((2, 7), np.float32)}, "size 7 on axis 1, the model needs 16"),
    ({"input": np.zeros((2, 16, 1), np.float32)}, "must have 2 dimensions"),
    ({"input": np.zeros((2, 16), np.int64)}, "must be float32"),
    ({"other": np.zeros((2, 16), np.float32)}, "missing input"),
])
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_wrong_inputs(mlp_art, mlp_onnx, runtime, feeds, match):
    art = mlp_art if runtime == "torch" else slimforge.load(mlp_onnx)
    sess = slimforge.open_session(art, runtime)
    with pytest.raises(slimforge.InputError, match=match):
        sess.run(feeds)


def test_empty_data_files(tmp_path, mlp_art, minilm):
    for name, art in (("empty.txt", minilm), ("empty.csv", mlp_art), ("empty.npy", mlp_art)):
        p = tmp_path / name
        p.touch()
        with pytest.raises(slimforge.DataError, match=rf"{name}: the file is empty"):
            slimforge.load_data(p, art)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n")
    with pytest.raises(slimforge.DataError, match="blank.txt: the file is empty"):
        slimforge.load_data(blank, minilm)
    header_only = tmp_path / "h.csv"
    header_only.write_text("a,b,label\n")
    with pytest.raises(slimforge.DataError, match="no rows"):
        slimforge.load_data(header_only, mlp_art)
    with pytest.raises(slimforge.DataError, match="no images"):
        (tmp_path / "imgs").mkdir()
        slimforge.load_data(tmp_path / "imgs", mlp_art)


def test_cli_bad_file_leaves_nothing(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"not an onnx file at all" * 10)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "slimforge", "optimize", str(bad), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "corrupt.onnx: not a valid ONNX model" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists() or not any(out.rglob("*.onnx"))
