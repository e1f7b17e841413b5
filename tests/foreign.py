"""ONNX files that look like exports from other tools: built from PyTorch modules, then rewritten with onnx.helper
(producer names, Constant/Identity weights, symbolic dimension names, old opsets, several inputs with RNN state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn


class SmallCNN(nn.Module):
    """A classifier at 3x96x96: enough convolution work for INT8 to matter."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        c = [3, 32, 64, 96, 128]
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(c[i], c[i + 1], 3, padding=1), nn.BatchNorm2d(c[i + 1]), nn.ReLU(),
                       nn.Conv2d(c[i + 1], c[i + 1], 3, padding=1), nn.BatchNorm2d(c[i + 1]), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c[-1], classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyYolo(nn.Module):
    """A YOLO-style detector: a conv backbone, two detection scales, a concat-based head (boxes, objectness,
    classes through Sigmoid), as Ultralytics-like exports look."""

    def __init__(self, classes: int = 4, anchors: int = 3) -> None:
        super().__init__()
        self.a, self.k = anchors, 5 + classes

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.LeakyReLU(0.1),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.LeakyReLU(0.1), nn.MaxPool2d(2))

        self.stem = nn.Sequential(block(3, 32), block(32, 64), block(64, 96))
        self.deep = block(96, 128)
        self.head_s = nn.Conv2d(96, anchors * self.k, 1)
        self.head_l = nn.Conv2d(128, anchors * self.k, 1)

    def _decode(self, p: torch.Tensor) -> torch.Tensor:
        n, _, h, w = p.shape
        p = p.reshape(n, self.a, self.k, h * w).permute(0, 1, 3, 2).reshape(n, self.a * h * w, self.k)
        return torch.cat([p[..., :4], torch.sigmoid(p[..., 4:])], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return torch.cat([self._decode(self.head_s(s)), self._decode(self.head_l(self.deep(s)))], dim=1)


class StatefulAudio(nn.Module):
    """Three inputs: audio frames, an RNN state, a scalar sample rate; two outputs: logits and the next state."""

    def __init__(self, frame: int = 160, hidden: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(frame, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.out = nn.Linear(hidden, 8)

    def forward(self, audio: torch.Tensor, state: torch.Tensor, sample_rate: torch.Tensor):
        x = torch.relu(self.proj(audio * (sample_rate.float() / 16000.0)))
        h = self.cell(x, state)
        return self.out(h), h


def _export(module: nn.Module, args: tuple, path: Path, *, opset: int, input_names: list[str],
            output_names: list[str], dynamic_axes: dict) -> Path:
    module.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():  # non-trivial BatchNorm statistics, as a trained model has
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(module, args, str(path), opset_version=opset, input_names=input_names,
                      output_names=output_names, dynamic_axes=dynamic_axes, dynamo=False)
    return path


def _producer(path: Path, name: str, version: str) -> Path:
    m = onnx.load(str(path))
    m.producer_name, m.producer_version = name, version
    onnx.save(m, str(path))
    return path


def cnn(path: Path, *, opset: int = 13) -> Path:
    torch.manual_seed(0)
    _export(SmallCNN(), (torch.randn(1, 3, 96, 96),), path, opset=opset, input_names=["input_1"],
            output_names=["logits"], dynamic_axes={"input_1": {0: "N"}, "logits": {0: "N"}})
    return _producer(path, "tf2onnx", "1.16.1")


def detector(path: Path) -> Path:
    torch.manual_seed(0)
    _export(TinyYolo(), (torch.randn(1, 3, 128, 128),), path, opset=13, input_names=["images"],
            output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
    return _producer(path, "pytorch", "ultralytics-like")


def constant_weights(src: Path, path: Path) -> Path:
    """Every initializer moved into a Constant node followed by an Identity: weights produced by nodes."""
    m = onnx.load(str(src))
    g = m.graph
    nodes = []
    for init in list(g.initializer):
        const_out = init.name + "__const"
        nodes.append(helper.make_node("Constant", [], [const_out], name=init.name + "_Constant",
                                      value=numpy_helper.from_array(numpy_helper.to_array(init), const_out)))
        nodes.append(helper.make_node("Identity", [const_out], [init.name], name=init.name + "_Identity"))
    del g.initializer[:]
    inputs = [i for i in g.input if i.name not in {n.output[0] for n in nodes}]
    del g.input[:]
    g.input.extend(inputs)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    m.producer_name = "keras2onnx"
    onnx.save(m, str(path))
    return path


def stateful(path: Path) -> Path:
    torch.manual_seed(0)
    _export(StatefulAudio(), (torch.randn(1, 160), torch.zeros(1, 64), torch.tensor(16000)), path, opset=13,
            input_names=["audio", "state", "sample_rate"], output_names=["logits", "state_out"],
            dynamic_axes={"audio": {0: "batch"}, "state": {0: "batch"}, "logits": {0: "batch"},
                          "state_out": {0: "batch"}})
    return _producer(path, "paddle2onnx", "1.2")


def symbolic(path: Path) -> Path:
    torch.manual_seed(0)
    _export(SmallCNN(), (torch.randn(1, 3, 96, 96),), path, opset=13, input_names=["pixel_values"],
            output_names=["scores"], dynamic_axes={"pixel_values": {0: "N", 2: "H", 3: "W"}, "scores": {0: "N"}})
    return _producer(path, "skl2onnx", "1.17")


def calibration_images(folder: Path, n: int = 48, size: int = 128) -> Path:
    """Crops of scikit-learn's sample images and upscaled ``load_digits`` digits, as PNG files."""
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    for i in range(n - 8):
        img = photos[i % len(photos)]
        s = int(rng.integers(size, min(img.shape[:2])))
        y, x = int(rng.integers(0, img.shape[0] - s)), int(rng.integers(0, img.shape[1] - s))
        Image.fromarray(img[y:y + s, x:x + s]).resize((size, size)).save(folder / f"photo_{i:03d}.png")
    digits = load_digits().images
    for i in range(8):
        d = (digits[i] * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(d).convert("RGB").resize((size, size), Image.NEAREST).save(folder / f"digit_{i}.png")
    return folder
