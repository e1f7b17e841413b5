"""Models from the wild, as other exporters write them: a strided detector whose concatenations need H and W to be
multiples of 32, a text-detection probability-map net with paddle-style anonymous dims, an STFT + LSTM voice-activity
model with state in and out and a sample-rate input, a classifier with two anonymous dims, an x2 super-resolution
net, and an OCR-style recogniser with a dynamic width. Each is built in torch (random init, BatchNorm statistics
from real photos where it has BatchNorm), exported, then rewritten the way its exporter writes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from tests.foreign import _producer


def _cbr(i: int, o: int, s: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.SiLU())


class StridedDetector(nn.Module):
    """A YOLOv8-like detector: a stride-32 backbone, an FPN whose upsample + concat joins need H and W to be
    multiples of 32, three heads decoded on a grid built from the feature shapes, output ``[batch, 4 + C, anchors]``
    (boxes in pixels, then class probabilities)."""

    def __init__(self, classes: int = 8) -> None:
        super().__init__()
        self.c = classes
        self.stem = nn.Sequential(_cbr(3, 16, 2), _cbr(16, 32, 2), _cbr(32, 32))         # /4
        self.p3 = nn.Sequential(_cbr(32, 64, 2), _cbr(64, 64))                           # /8
        self.p4 = nn.Sequential(_cbr(64, 96, 2), _cbr(96, 96))                           # /16
        self.p5 = nn.Sequential(_cbr(96, 128, 2), _cbr(128, 128))                        # /32
        self.up4 = _cbr(128 + 96, 96, k=1)
        self.up3 = _cbr(96 + 64, 64, k=1)
        self.heads = nn.ModuleList(nn.Conv2d(c, 4 + classes, 1) for c in (64, 96, 128))
        with torch.no_grad():  # peaky class scores, as a trained detector's: a few confident boxes per image
            for h in self.heads:
                h.weight[4:].mul_(3.0)
                h.bias[4:].fill_(-5.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        p3 = self.p3(x)
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        f4 = self.up4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        f3 = self.up3(torch.cat([F.interpolate(f4, scale_factor=2.0, mode="nearest"), p3], 1))
        outs = []
        for feat, head, stride in zip((f3, f4, p5), self.heads, (8, 16, 32)):
            p = head(feat)
            n, _, h, w = p.shape
            gy, gx = torch.meshgrid(torch.arange(h, dtype=p.dtype), torch.arange(w, dtype=p.dtype), indexing="ij")
            xy = (torch.stack([gx, gy]).reshape(1, 2, h * w) + torch.sigmoid(p[:, 0:2].reshape(n, 2, h * w))) * stride
            wh = torch.sigmoid(p[:, 2:4].reshape(n, 2, h * w)) * (4 * stride)
            outs.append(torch.cat([xy, wh, torch.sigmoid(p[:, 4:].reshape(n, self.c, h * w))], 1))
        return torch.cat(outs, 2)


class TextDetector(nn.Module):
    """A DBNet-like text-detection net: a stride-32 backbone, an FPN of upsample + add, a probability map at the
    input's resolution (Sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.ModuleList([nn.Sequential(_cbr(3, 16, 2), _cbr(16, 24, 2)), _cbr(24, 32, 2), _cbr(32, 48, 2),
                                _cbr(48, 64, 2)])
        self.lat = nn.ModuleList(nn.Conv2d(c, 32, 1) for c in (24, 32, 48, 64))
        self.head = nn.Sequential(_cbr(32, 16), nn.ConvTranspose2d(16, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.ConvTranspose2d(16, 1, 2, 2))
        with torch.no_grad():  # a confident map (text or not), as a trained DBNet's: few pixels near 0.5
            self.head[-1].weight.mul_(80.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.s:
            x = stage(x)
            feats.append(x)
        y = self.lat[3](feats[3])
        for i in (2, 1, 0):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lat[i](feats[i])
        return torch.sigmoid(self.head(y))


class Vad(nn.Module):
    """A Silero-VAD-like model: reflect pad + a fixed STFT basis as a Conv1d, magnitude, a conv encoder, an LSTM
    cell with its state in and out (``[2, batch, 64]``), a speech probability; ``sr`` scales the input."""

    def __init__(self, n_fft: int = 256, hop: int = 128, hidden: int = 64) -> None:
        super().__init__()
        self.pad = n_fft // 4
        t = torch.arange(n_fft, dtype=torch.float32)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float32)[:, None]
        win = torch.hann_window(n_fft)
        basis = torch.cat([torch.cos(2 * torch.pi * k * t / n_fft), -torch.sin(2 * torch.pi * k * t / n_fft)]) * win
        self.register_buffer("basis", basis[:, None, :])
        self.hop, self.bins = hop, n_fft // 2 + 1
        self.enc = nn.Sequential(nn.Conv1d(self.bins, 64, 3, padding=1), nn.ReLU(), nn.Conv1d(64, hidden, 3, padding=1),
                                 nn.ReLU())
        self.cell = nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, input: torch.Tensor, state: torch.Tensor, sr: torch.Tensor):  # noqa: A002 - Silero's name
        x = F.pad((input * (sr.float() / 16000.0)).unsqueeze(1), (0, self.pad), mode="reflect")
        spec = F.conv1d(x, self.basis, stride=self.hop)
        mag = torch.sqrt(spec[:, :self.bins] ** 2 + spec[:, self.bins:] ** 2 + 1e-9)
        feat = self.enc(torch.log(mag + 1e-3)).mean(dim=2)
        h, c = self.cell(feat, (state[0], state[1]))
        return torch.sigmoid(self.out(h)), torch.stack([h, c])


class TinyClassifier(nn.Module):
    """A small classifier that takes any H and W (global pooling)."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.f = nn.Sequential(_cbr(3, 16, 2), _cbr(16, 32, 2), _cbr(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(self.f(x).mean((2, 3))), -1)


class SuperRes(nn.Module):
    """An ESPCN-like x2 super-resolution net: convs, PixelShuffle, a skip from the bilinear upscale."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.Tanh(), nn.Conv2d(32, 32, 3, padding=1),
                                  nn.Tanh(), nn.Conv2d(32, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.scale = scale
        with torch.no_grad():
            self.body[-2].weight.mul_(0.1)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        up = F.interpolate(input, scale_factor=float(self.scale), mode="bilinear", align_corners=False)
        return (up + self.body(input)).clamp(0.0, 1.0)


class Recognizer(nn.Module):
    """A CRNN-like text recogniser: height 32 pooled to 1, width / 4 time steps, a BiLSTM, per-step character
    probabilities ``[batch, T, classes]`` (CTC)."""

    def __init__(self, classes: int = 37) -> None:
        super().__init__()
        self.f = nn.Sequential(_cbr(3, 32), nn.MaxPool2d(2), _cbr(32, 64), nn.MaxPool2d(2), _cbr(64, 96),
                               nn.MaxPool2d((2, 1)), _cbr(96, 96), nn.MaxPool2d((4, 1)))
        self.rnn = nn.LSTM(96, 64, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f(x).squeeze(2).permute(0, 2, 1)
        y, _ = self.rnn(f)
        return torch.softmax(self.fc(y) * 3.0, -1)


def _bn_from_photos(module: nn.Module, shape: tuple[int, ...]) -> None:
    """BatchNorm statistics from real photos (crops of scikit-learn's sample images), as a trained net has."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    h, w = shape[-2:]
    crops = []
    for i in range(16):
        img = photos[i % 2]
        y, x = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
        crops.append(img[y:y + h, x:x + w].transpose(2, 0, 1) / 255.0)
    batch = torch.tensor(np.stack(crops), dtype=torch.float32)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the passes
    module.train()
    with torch.no_grad():
        for _ in range(2):
            module(batch)
    module.eval()


def _export(module: nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str], axes: dict,
            opset: int = 13) -> Path:
    module.eval()
    torch.onnx.export(module, args, str(path), opset_version=opset, input_names=names, output_names=outputs,
                      dynamic_axes=axes, dynamo=False)
    return path


def _anonymous(path: Path, dims: dict[str, list[int]], batch_minus_one: bool = True) -> Path:
    """Paddle2onnx-style dims: batch as -1, the listed axes of each tensor as the anonymous ``?``."""
    m = onnx.load(str(path))
    for vi in (*m.graph.input, *m.graph.output):
        for axis in dims.get(vi.name, []):
            d = vi.type.tensor_type.shape.dim[axis]
            if axis == 0 and batch_minus_one:
                d.Clear()
                d.dim_value = -1
            else:
                d.Clear()
                d.dim_param = "?"
    m.producer_name, m.producer_version = "paddle2onnx", "1.0.6"
    onnx.save(m, str(path))
    return path


def strided_detector(path: Path) -> Path:
    torch.manual_seed(0)
    model = StridedDetector()
    _bn_from_photos(model, (1, 3, 320, 320))
    _export(model, (torch.rand(1, 3, 320, 320),), path, ["images"], ["output0"],
            {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}}, opset=17)
    return _producer(path, "pytorch", "2.5.1")


def text_detector(path: Path) -> Path:
    torch.manual_seed(1)
    model = TextDetector()
    _bn_from_photos(model, (1, 3, 256, 256))
    _export(model, (torch.rand(1, 3, 256, 256),), path, ["x"], ["sigmoid_0.tmp_0"],
            {"x": {0: "n", 2: "h", 3: "w"}, "sigmoid_0.tmp_0": {0: "n", 2: "h", 3: "w"}}, opset=11)
    return _anonymous(path, {"x": [0, 2, 3], "sigmoid_0.tmp_0": [0, 2, 3]})


def vad(path: Path) -> Path:
    torch.manual_seed(2)
    _export(Vad(), (torch.randn(1, 512) * 0.1, torch.zeros(2, 1, 64), torch.tensor(16000)), path,
            ["input", "state", "sr"], ["output", "stateN"],
            {"input": {0: "batch", 1: "samples"}, "state": {1: "batch"}, "output": {0: "batch"},
             "stateN": {1: "batch"}}, opset=16)
    return _producer(path, "pytorch", "silero-like")


def anonymous_classifier(path: Path) -> Path:
    torch.manual_seed(3)
    model = TinyClassifier()
    _bn_from_photos(model, (1, 3, 48, 192))
    _export(model, (torch.rand(1, 3, 48, 192),), path, ["x"], ["softmax_0.tmp_0"],
            {"x": {0: "n", 2: "h", 3: "w"}, "softmax_0.tmp_0": {0: "n"}})
    return _anonymous(path, {"x": [0, 2, 3], "softmax_0.tmp_0": [0]})


def super_resolution(path: Path) -> Path:
    torch.manual_seed(4)
    _export(SuperRes(), (torch.rand(1, 3, 64, 64),), path, ["input"], ["output"],
            {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "out_height", 3: "out_width"}})
    return _producer(path, "pytorch", "2.4.0")


def recognizer(path: Path) -> Path:
    torch.manual_seed(5)
    model = Recognizer()
    _bn_from_photos(model, (1, 3, 32, 128))
    _export(model, (torch.rand(1, 3, 32, 128),), path, ["x"], ["softmax_2.tmp_0"],
            {"x": {0: "n", 3: "w"}, "softmax_2.tmp_0": {0: "n", 1: "t"}})
    return _anonymous(path, {"x": [0, 3], "softmax_2.tmp_0": [0, 1]})


WILD = {"strided_detector": strided_detector, "text_detector": text_detector, "vad": vad,
        "anonymous_classifier": anonymous_classifier, "super_resolution": super_resolution, "recognizer": recognizer}


def corpus(folder: Path) -> dict[str, Path]:
    """Every model of the corpus, written into ``folder``: the six above and the six earlier foreign files."""
    from tests import foreign

    folder.mkdir(parents=True, exist_ok=True)
    out = {name: make(folder / f"{name}.onnx") for name, make in WILD.items()}
    out.update({"cnn": foreign.cnn(folder / "cnn.onnx"), "detector": foreign.detector(folder / "detector.onnx"),
                "stateful": foreign.stateful(folder / "stateful.onnx"), "symbolic": foreign.symbolic(folder / "symbolic.onnx"),
                "opset11": foreign.cnn(folder / "opset11.onnx", opset=11)})
    out["constant_weights"] = foreign.constant_weights(out["cnn"], folder / "constant_weights.onnx")
    return out


# ---------------------------------------------------------------- classifiers from their published layer configs


class _Basic(nn.Module):
    def __init__(self, i: int, o: int, s: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o)
        self.c2, self.b2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
        self.down = (nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o)) if s != 1 or i != o
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.down(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016, table 1): 7x7/2 stem, max pool, [2, 2, 2, 2] basic blocks of 64-512, 1000 classes."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, i = [], 64
        for o, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Basic(i, o, s), _Basic(o, o, 1)]
            i = o
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class _InvertedResidual(nn.Module):
    def __init__(self, i: int, k: int, exp: int, o: int, se: bool, act: str, s: int) -> None:
        super().__init__()
        a = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if exp != i:
            layers += [nn.Conv2d(i, exp, 1, bias=False), nn.BatchNorm2d(exp), a()]
        layers += [nn.Conv2d(exp, exp, k, s, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), a()]
        self.pre = nn.Sequential(*layers)
        sq = max(8, (exp // 4 + 4) // 8 * 8)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(exp, sq, 1), nn.ReLU(), nn.Conv2d(sq, exp, 1),
                                nn.Hardsigmoid()) if se else None
        self.post = nn.Sequential(nn.Conv2d(exp, o, 1, bias=False), nn.BatchNorm2d(o))
        self.res = s == 1 and i == o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre(x)
        if self.se is not None:
            y = y * self.se(y)
        y = self.post(y)
        return x + y if self.res else y


# MobileNetV3-Large (Howard et al. 2019, table 1): kernel, expansion, out, SE, activation, stride
MNV3_LARGE = [(3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
              (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
              (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
              (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
              (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1)]


class MobileNetV3Large(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        i = 16
        for k, exp, o, se, act, s in MNV3_LARGE:
            layers.append(_InvertedResidual(i, k, exp, o, se, act, s))
            i = o
        layers += [nn.Conv2d(i, 960, 1, bias=False), nn.BatchNorm2d(960), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _photo_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """Square crops of random size from scikit-learn's sample photos, resized to ``size``, scaled to [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        s = int(rng.integers(size // 2, min(img.shape[:2])))
        y, x = int(rng.integers(0, img.shape[0] - s)), int(rng.integers(0, img.shape[1] - s))
        crop = np.asarray(Image.fromarray(img[y:y + s, x:x + s]).resize((size, size)), np.float32)
        crops.append(crop.transpose(2, 0, 1) / 255.0)
    return torch.tensor(np.stack(crops))


def _fit_head(model: nn.Module, last: nn.Linear, classes: int = 10) -> None:
    """A trained classifier's last layer: a linear probe on the net's features of real photo crops, fit to the
    visual clusters (k-means) of those features. A random last layer over 1000 classes puts the top two logits
    within ~2% of the logits' spread on most images, so any rounding (BF16 included) flips top-1; a trained head's
    margins are what top-1 agreement is meant to measure. The other rows keep their random init."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    feats: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    with torch.no_grad():
        for batch in _photo_crops(384, 224, seed=7).split(64):
            model(batch)
    hook.remove()
    x = torch.cat(feats).numpy().astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    labels = KMeans(classes, n_init=4, random_state=0).fit_predict(z)
    probe = LogisticRegression(C=0.05, max_iter=2000).fit(z, labels)
    w = probe.coef_ / sd
    b = probe.intercept_ - (w * mu).sum(1)
    with torch.no_grad():
        last.weight[:classes] = torch.tensor(w, dtype=torch.float32)
        last.bias[:classes] = torch.tensor(b, dtype=torch.float32)


def _classifier(model: nn.Module, last: nn.Linear, path: Path, producer: str) -> Path:
    """Random init (PyTorch's defaults), BatchNorm statistics from real photos, a last layer fit as a linear probe
    on real photos (``_fit_head``), exported at 224x224 with a dynamic batch named as another exporter names it."""
    _bn_from_photos(model, (1, 3, 224, 224))
    _fit_head(model, last)
    _export(model, (torch.rand(1, 3, 224, 224),), path, ["input"], ["logits"],
            {"input": {0: "DynamicDimension.0"}, "logits": {0: "DynamicDimension.0"}})
    return _producer(path, producer, "1.0")


def resnet18(path: Path) -> Path:
    torch.manual_seed(10)
    model = ResNet18()
    return _classifier(model, model.fc, path, "pytorch")


def mobilenet_v3(path: Path) -> Path:
    torch.manual_seed(11)
    model = MobileNetV3Large()
    return _classifier(model, model.head[-1], path, "tf2onnx")
