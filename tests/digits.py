"""A small CNN trained here on scikit-learn's digits (8x8 grayscale): a real, accurate model in a few seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return train_test_split(x, d.target.astype(np.int64), test_size=0.3, random_state=seed, stratify=d.target)


def train_digits_cnn(epochs: int = 15, seed: int = 0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    torch.manual_seed(seed)
    x_tr, x_te, y_tr, y_te = digits_split(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return model, {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def write_npz(path: Path, x: np.ndarray, y: np.ndarray, input_name: str = "input") -> Path:
    np.savez(path, **{input_name: x, "labels": y})
    return path
