"""The ``mobilenet_v3`` search space: an elastic MobileNetV3-style family in plain torch.

An architecture is a width multiplier plus, per stage, a depth (blocks), a depthwise kernel (3 or 5) and an
expansion ratio. Channels are rounded to multiples of 8 (what SIMD lanes and GEMM tiles like). Strides adapt to the
input: a stage halves the feature map only while it is at least 4 pixels, so 8x8 digits and 224x224 photos both fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

# base channels and whether the stage's first block halves the feature map (MobileNetV3-Small-like, 4 stages)
STAGES: tuple[tuple[int, bool], ...] = ((16, True), (24, True), (40, True), (80, False))
WIDTHS = (0.35, 0.5, 0.75, 1.0)
DEPTHS = (1, 2, 3)
LATE_DEPTHS = (0, 1, 2, 3)  # the last two stages may be dropped whole (elastic depth)
KERNELS = (3, 5)
EXPANDS = (1, 2, 3, 4, 6)  # 1: no expansion convolution (MobileNetV3's first block)
STEM, HEAD = 16, 128


def make_divisible(c: float, by: int = 8) -> int:
    """``c`` rounded to a multiple of ``by`` (never below ``by``, never more than 10% down).

    Example:
        >>> make_divisible(16 * 0.35), make_divisible(80 * 0.75), make_divisible(3)
        (8, 64, 8)
    """
    out = max(by, int(c + by / 2) // by * by)
    return out + by if out < 0.9 * c else out


@dataclass(frozen=True)
class MbArch:
    """One point of the space.

    Example:
        >>> a = MbArch(0.5, (1, 2, 2, 1), (3, 5, 3, 3), (3, 4, 6, 3))
        >>> a.describe()
        'w0.5 d1-2-2-1 k3-5-3-3 e3-4-6-3 se0-0-1-1'
    """

    width: float
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    se: tuple[bool, ...] = (False, False, True, True)  # squeeze-and-excitation per stage

    def describe(self) -> str:
        j = "-".join
        return (f"w{self.width:g} d{j(map(str, self.depths))} k{j(map(str, self.kernels))} "
                f"e{j(map(str, self.expands))} se{j(str(int(b)) for b in self.se)}")

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "depths": list(self.depths), "kernels": list(self.kernels),
                "expands": list(self.expands), "se": list(self.se)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> MbArch:
        return MbArch(float(d["width"]), tuple(d["depths"]), tuple(d["kernels"]), tuple(d["expands"]),
                      tuple(bool(b) for b in d.get("se", (False, False, True, True))))


def sample(trial: Any) -> MbArch:
    """An architecture drawn by an Optuna trial (one categorical choice per dimension)."""
    n = len(STAGES)
    return MbArch(float(trial.suggest_categorical("width", WIDTHS)),
                  tuple(int(trial.suggest_categorical(f"depth{i}", DEPTHS if i < 2 else LATE_DEPTHS))
                        for i in range(n)),
                  tuple(int(trial.suggest_categorical(f"kernel{i}", KERNELS)) for i in range(n)),
                  tuple(int(trial.suggest_categorical(f"expand{i}", EXPANDS)) for i in range(n)),
                  tuple(bool(trial.suggest_categorical(f"se{i}", (False, True))) for i in range(n)))


@dataclass(frozen=True)
class LayerSig:
    """What a layer's latency depends on: its kind, channels, kernel, expansion, stride and input size. Equal
    signatures share one measurement in the latency table."""

    kind: str  # stem | block | head
    cin: int
    cout: int
    kernel: int
    expand: int
    stride: int
    hw: tuple[int, int]
    se: bool = False

    def build(self, classes: int) -> nn.Module:
        if self.kind == "stem":
            return nn.Sequential(nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, bias=False),
                                 nn.BatchNorm2d(self.cout), nn.Hardswish())
        if self.kind == "head":
            return nn.Sequential(nn.Conv2d(self.cin, self.cout, 1, bias=False), nn.BatchNorm2d(self.cout),
                                 nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.cout, classes))
        return Block(self.cin, self.cout, self.kernel, self.expand, self.stride, self.se)

    def key(self) -> str:
        return (f"{self.kind}:{self.cin}>{self.cout}:k{self.kernel}:e{self.expand}:s{self.stride}:se{int(self.se)}:"
                f"{self.hw[0]}x{self.hw[1]}")


class Block(nn.Module):
    """An inverted residual: 1x1 expansion (unless the ratio is 1), depthwise kxk, optional squeeze-and-excitation,
    1x1 projection (residual when the shape is kept)."""

    def __init__(self, cin: int, cout: int, kernel: int, expand: int, stride: int, se: bool = False) -> None:
        super().__init__()
        mid = make_divisible(cin * expand) if expand > 1 else cin
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish()) \
            if expand > 1 else nn.Identity()
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                                nn.BatchNorm2d(mid), nn.Hardswish())
        sq = make_divisible(mid // 4)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, sq, 1), nn.ReLU(), nn.Conv2d(sq, mid, 1),
                                nn.Hardsigmoid()) if se else None
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        h = self.project(h * self.se(h) if self.se is not None else h)
        return x + h if self.residual else h


def layers(arch: MbArch, in_ch: int, hw: tuple[int, int]) -> Iterator[LayerSig]:
    """The layer signatures of ``arch`` on inputs of ``in_ch`` channels and size ``hw``, in order."""
    h, w = hw
    s = 2 if min(h, w) >= 32 else 1  # small inputs (digits) keep their resolution in the stem
    stem = make_divisible(STEM * max(arch.width, 0.5))
    yield LayerSig("stem", in_ch, stem, 3, 1, s, (h, w))
    h, w, c = -(-h // s), -(-w // s), stem
    for (base, halves), depth, k, e, se in zip(STAGES, arch.depths, arch.kernels, arch.expands, arch.se):
        out = make_divisible(base * arch.width)
        for i in range(depth):
            stride = 2 if i == 0 and halves and min(h, w) >= 4 else 1
            yield LayerSig("block", c, out, k, e, stride, (h, w), se)
            h, w, c = -(-h // stride), -(-w // stride), out
    yield LayerSig("head", c, make_divisible(HEAD * max(arch.width, 0.5)), 1, 1, 1, (h, w))


class MobileNetV3Like(nn.Sequential):
    """The model of ``arch``: stem, the blocks of each stage, head (1x1 conv, pooling, classifier)."""

    def __init__(self, arch: MbArch, in_ch: int, hw: tuple[int, int], classes: int) -> None:
        super().__init__(*(sig.build(classes) for sig in layers(arch, in_ch, hw)))
        self.arch = arch


def build_model(arch: MbArch, in_ch: int, hw: tuple[int, int], classes: int) -> nn.Module:
    """A fresh (untrained) model of ``arch``.

    Example:
        >>> m = build_model(MbArch(0.5, (1, 1, 1, 1), (3, 3, 3, 3), (3, 3, 3, 3)), 1, (8, 8), 10)
        >>> tuple(m(torch.zeros(2, 1, 8, 8)).shape)
        (2, 10)
    """
    return MobileNetV3Like(arch, in_ch, hw, classes)
