"""Shared fixtures: tiny models built in code, and the real bundled MiniLM (loaded once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 16, d_hidden: int = 64, d_out: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d_hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyImage2Image(nn.Module):
    """A fully convolutional image-to-image network: any height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(self.enc(x)))


class TinySR(nn.Module):
    """A x2 super-resolution network: convolutions, then PixelShuffle(2); [N, 3, H, W] -> [N, 3, 2H, 2W]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
        self.up = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(self.body(x)))


@pytest.fixture()
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return TinyMLP()


@pytest.fixture()
def mlp_art(mlp):
    import slimforge

    return slimforge.load(mlp, example_inputs=torch.randn(2, 16), name="mlp")


@pytest.fixture()
def mlp_onnx(mlp_art, tmp_path) -> Path:
    import slimforge

    return slimforge.export(mlp_art, tmp_path / "mlp.onnx", workdir=tmp_path).path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from slimforge.io.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def minilm(minilm_path):
    import slimforge

    return slimforge.load(minilm_path)


@pytest.fixture(scope="session")
def minilm_onnx(minilm, tmp_path_factory) -> Path:
    import slimforge

    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    return slimforge.export(minilm, out, workdir=out.parent).path


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The digits CNN (trained here), its ONNX export, and calibration/test data as .npz."""
    import slimforge
    from tests.digits import train_digits_cnn, write_npz

    d = tmp_path_factory.mktemp("digits")
    model, data = train_digits_cnn()
    art = slimforge.load(model, example_inputs=torch.from_numpy(data["x_test"][:2]), name="digits")
    onnx_art = slimforge.export(art, d / "digits.onnx", workdir=d)
    return {"module": model, "torch": art, "onnx": onnx_art, "data": data,
            "calib": write_npz(d / "calib.npz", data["x_train"][:256], data["y_train"][:256]),
            "test": write_npz(d / "test.npz", data["x_test"], data["y_test"]), "dir": d}
