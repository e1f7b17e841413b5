"""The ``subnet`` space for convolutional nets: how many output channels each stage of the user's own CNN keeps (and
how many features each hidden Linear layer of its head), in multiples of 8 (hardware-friendly widths), from an eighth
of the original to all of it.

A stage is a Torch-Pruning dependency group rooted at a convolution: the channels that must go together (a residual
sum couples every convolution that writes into it, a depthwise convolution its input and output). A candidate is cut
from a copy of the model with Torch-Pruning (one ratio per stage, channels chosen by weight magnitude), then refitted
without training: the BatchNorm statistics are measured again on the data and the Linear layers that read pruned
features are refitted by least squares against the original (``techniques.prune.reconstruct``).

Its latency is predicted from a table of measured convolutions: every convolution of the model at each (input,
output) width a candidate gives it, timed alone on inputs of its shape, plus the time spent outside convolutions
(normalisation, activations, pooling, the head). That part shrinks with the activations too: it is measured on the
original and on its narrowest candidate (each timed whole, less its convolutions) and interpolated in between by the
number of activation values the convolutions and Linear layers write.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slimforge.bench.compare import compare
from slimforge.bench.timing import BenchSpec
from slimforge.errors import ConfigError, TechniqueFailed, require
from slimforge.techniques.prune.reconstruct import reconstruct
from slimforge.torch_utils import set_training

MULTIPLE = 8
FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
LAYERS = (nn.Conv2d, nn.Linear)
TABLE_SPEC = BenchSpec(warmup=2, repeats=8, min_time_s=0.05, max_time_s=8.0, rounds=3, max_rounds=5, rel_ci=0.1)


@dataclass(frozen=True)
class CnnArch:
    """Output channels kept per stage, in the order of ``CnnGeometry.stages``."""

    widths: tuple[int, ...]

    def describe(self) -> str:
        return "channels " + "/".join(str(w) for w in self.widths)

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.widths)}


@dataclass(frozen=True)
class CnnGeometry:
    """The stages of a CNN: per stage its name (its first convolution), its width, which convolutions write its
    channels and which read them."""

    stages: tuple[str, ...]
    channels: tuple[int, ...]
    writers: tuple[tuple[str, ...], ...]
    readers: tuple[tuple[str, ...], ...]
    roots: tuple[str, ...] = ()  # the module Torch-Pruning roots each stage's group at (its ratio's key)

    def choices(self, i: int) -> list[int]:
        """Widths stage ``i`` may keep.

        Example:
            >>> CnnGeometry(("c",), (64,), (("c",),), ((),)).choices(0)
            [8, 16, 24, 32, 40, 48, 56, 64]
        """
        full = self.channels[i]
        return sorted({min(full, max(MULTIPLE, round(full * f / MULTIPLE) * MULTIPLE)) for f in FRACTIONS})

    def full(self) -> CnnArch:
        return CnnArch(self.channels)

    def conv_widths(self, arch: CnnArch, convs: dict[str, nn.Module]) -> dict[str, tuple[int, int]]:
        """Each of ``convs``' (convolutions, Linear layers) input and output channels in the candidate ``arch``."""
        shape = {n: [c.in_channels, c.out_channels] if isinstance(c, nn.Conv2d) else [c.in_features, c.out_features]
                 for n, c in convs.items()}
        for w, writers, readers in zip(arch.widths, self.writers, self.readers):
            for n in writers:
                if n in shape:  # (a Linear stage's cost is in the time outside convolutions)
                    shape[n][1] = w
            for n in readers:
                if n in shape:
                    shape[n][0] = w
        return {n: (a, b) for n, (a, b) in shape.items()}


def _outputs_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the model's (never pruned): the last Linear or convolution in module order."""
    last = [m for m in model.modules() if isinstance(m, LAYERS)]
    return last[-1:]


def _width(m: nn.Module) -> int:
    return int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)


def cnn_geometry(model: nn.Module, example: Sequence[torch.Tensor]) -> CnnGeometry:
    """The stages of ``model`` (convolutions and Linear layers; an MLP's hidden layers count), traced on
    ``example`` inputs."""
    tp = require("torch_pruning", extra="torch", package="torch-pruning")
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=tuple(example))
    stages = []
    for group in graph.get_all_groups(ignored_layers=_outputs_layers(model), root_module_types=list(LAYERS)):
        writers = sorted({names[d.target.module] for d, _ in group if graph.is_out_channel_pruning_fn(d.handler)
                          and isinstance(d.target.module, LAYERS)}, key=order.get)
        readers = sorted({names[d.target.module] for d, _ in group if graph.is_in_channel_pruning_fn(d.handler)
                          and isinstance(d.target.module, LAYERS)}, key=order.get)
        root = group[0].dep.target.module
        if writers and isinstance(root, LAYERS) and _width(root) >= 2 * MULTIPLE:
            stages.append((writers[0], _width(root), tuple(writers), tuple(readers), names[root]))
    if not stages:
        raise ConfigError("the subnet space takes transformer encoders, or nets of convolutions and Linear layers "
                          "with a hidden one of 16 channels or more to narrow; this model has none: try --space "
                          "mobilenet_v3")
    stages.sort(key=lambda s: order[s[0]])
    return CnnGeometry(tuple(s[0] for s in stages), tuple(s[1] for s in stages), tuple(s[2] for s in stages),
                       tuple(s[3] for s in stages), tuple(s[4] for s in stages))


class CnnBuilder:
    """Cuts candidates from ``model`` and refits them on ``batches`` (tuples of input tensors)."""

    def __init__(self, model: nn.Module, geo: CnnGeometry, batches: Sequence[Sequence[torch.Tensor]]) -> None:
        self.original = copy.deepcopy(model)
        set_training(self.original, False)
        self.geo, self.batches = geo, batches

    def build(self, arch: CnnArch, *, refit: bool = True, batches: Sequence[Sequence[torch.Tensor]] | None = None
              ) -> tuple[nn.Module, list[dict]]:
        tp = require("torch_pruning", extra="torch", package="torch-pruning")
        model = copy.deepcopy(self.original)
        mods = dict(model.named_modules())
        # (full - w - 1e-6) / full: Torch-Pruning keeps int(full * (1 - ratio)) channels, which float error in
        # (full - w) / full can leave one short (48 -> 7 where 8 was asked for)
        ratios = {mods[r]: (full - w - 1e-6) / full for r, full, w in zip(self.geo.roots, self.geo.channels,
                                                                          arch.widths) if w < full}
        if ratios:
            pruner = tp.pruner.MetaPruner(model, tuple(self.batches[0]), importance=tp.importance.MagnitudeImportance(
                p=2), pruning_ratio=0.0, pruning_ratio_dict=ratios, ignored_layers=_outputs_layers(model),
                root_module_types=list(LAYERS), round_to=None)
            pruner.step()
            model.zero_grad(set_to_none=True)
        got = tuple(_width(mods[s]) for s in self.geo.stages)
        if got != arch.widths:
            raise TechniqueFailed(f"Torch-Pruning cut {got} channels where {arch.widths} was asked for")
        fits: list[dict] = []
        if refit and ratios:
            data = self.batches if batches is None else batches
            recalibrate_batchnorm(model, data)
            fits = [f.to_dict() for f in reconstruct(self.original, model, data)]
        set_training(model, False)
        return model, fits


def recalibrate_batchnorm(model: nn.Module, batches: Sequence[Sequence[torch.Tensor]]) -> None:
    """Measure every BatchNorm's statistics again on ``batches`` (their cumulative mean): a narrowed layer feeds
    the next one other sums than those the stored statistics were measured on. Weights are not touched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    set_training(model, False)
    for m in norms:
        m.train()
    with torch.no_grad():
        for b in batches:
            model(*b)
    set_training(model, False)


class CnnLatency:
    """Measured latency of candidates from a table of convolutions timed alone (see the module's docstring)."""

    def __init__(self, builder: CnnBuilder, feeds: dict[str, np.ndarray], *, runtime: str = "torch",
                 threads: int | None = None, spec: BenchSpec = TABLE_SPEC) -> None:
        self.builder, self.feeds, self.runtime, self.threads, self.spec = builder, feeds, runtime, threads, spec
        self.convs = {n: m for n, m in builder.original.named_modules() if isinstance(m, nn.Conv2d)}
        self.layers = {n: m for n, m in builder.original.named_modules() if isinstance(m, LAYERS)}
        self.inputs, self.outputs = _conv_shapes(builder.original, self.layers, feeds)
        self.ms: dict[tuple[str, int, int], float] = {}
        self.outside_ms: float | None = None  # the original's time outside convolutions
        self.outside_narrow_ms: float | None = None  # and its narrowest candidate's
        self.narrow = CnnArch(tuple(builder.geo.choices(i)[0] for i in range(len(builder.geo.stages))))
        self.measured = 0

    def _volume(self, arch: CnnArch) -> float:
        """Activation values the convolutions and Linear layers of ``arch`` write (per example)."""
        widths = self.builder.geo.conv_widths(arch, self.layers)
        per_channel = {n: float(np.prod(self.outputs[n][2:])) if n in self.convs else
                       float(np.prod(self.outputs[n][1:-1])) for n in self.layers}  # a Linear's features are last
        return float(sum(widths[n][1] * per_channel[n] for n in self.layers))

    def _open(self, module: nn.Module, feeds: dict[str, np.ndarray]) -> Any:
        from slimforge.io.models import load
        from slimforge.runtimes import open_session

        return open_session(load(module.eval(), example_inputs=feeds), self.runtime, threads=self.threads)

    def _conv(self, name: str, cin: int, cout: int) -> tuple[nn.Module, dict[str, np.ndarray]]:
        c = self.convs[name]
        depthwise = c.groups > 1 and c.groups == c.in_channels
        conv = nn.Conv2d(cin, cout, c.kernel_size, c.stride, c.padding, c.dilation,  # type: ignore[arg-type]
                         groups=cin if depthwise else c.groups, bias=c.bias is not None, padding_mode=c.padding_mode)
        shape = self.inputs[name]
        x = np.random.default_rng(0).standard_normal((shape[0], cin, *shape[2:])).astype(np.float32)
        return conv, {"x": x}

    def measure(self, sigs: set[tuple[str, int, int]]) -> None:
        new = sorted(s for s in sigs if s not in self.ms)
        full = {(n, c.in_channels, c.out_channels) for n, c in self.convs.items()}
        if self.outside_ms is None:
            new = sorted(set(new) | (full - set(self.ms)))
        if not new:
            return
        sessions, feeds = {}, {}
        batch = len(next(iter(self.feeds.values())))
        sessions["(overhead)"] = self._open(nn.Identity(), {"x": np.zeros((batch, 1), np.float32)})
        feeds["(overhead)"] = {batch: {"x": np.zeros((batch, 1), np.float32)}}
        if self.outside_ms is None:
            narrow, _ = self.builder.build(self.narrow, refit=False)
            new = sorted(set(new) | (self.signatures(self.narrow) - set(self.ms)))
            sessions["(model)"], feeds["(model)"] = self._open(self.builder.original, self.feeds), {batch: self.feeds}
            sessions["(narrowest)"], feeds["(narrowest)"] = self._open(narrow, self.feeds), {batch: self.feeds}
        for s in new:
            conv, f = self._conv(*s)
            sessions[str(s)], feeds[str(s)] = self._open(conv, f), {batch: f}
        try:
            comp = compare(sessions, feeds, self.spec)
        finally:
            for sess in sessions.values():
                sess.close()
        over = comp.timing("(overhead)", batch).p50
        for s in new:
            self.ms[s] = max(comp.timing(str(s), batch).p50 - over, 0.0)
        if self.outside_ms is None:
            whole = comp.timing("(model)", batch).p50
            self.outside_ms = max(whole - sum(self.ms[s] for s in full), 0.0)
            small = comp.timing("(narrowest)", batch).p50
            self.outside_narrow_ms = min(max(small - sum(self.ms[s] for s in self.signatures(self.narrow)), 0.0),
                                         self.outside_ms)
        self.measured += len(new)

    def signatures(self, arch: CnnArch) -> set[tuple[str, int, int]]:
        return {(n, a, b) for n, (a, b) in self.builder.geo.conv_widths(arch, self.convs).items()}

    def predict(self, arch: CnnArch) -> float:
        sigs = self.signatures(arch)
        self.measure(sigs)
        full, narrow = self._volume(self.builder.geo.full()), self._volume(self.narrow)
        share = 1.0 if full <= narrow else (self._volume(arch) - narrow) / (full - narrow)
        outside = float(self.outside_narrow_ms or 0.0) + share * float((self.outside_ms or 0.0) -
                                                                        (self.outside_narrow_ms or 0.0))
        return outside + sum(self.ms[s] for s in sigs)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": len(next(iter(self.feeds.values()))), "threads": self.threads, "runtime": self.runtime,
                "outside_convolutions_ms": {"original": self.outside_ms, "narrowest": self.outside_narrow_ms},
                "convolutions_ms": {f"{n} {a}->{b}": v for (n, a, b), v in sorted(self.ms.items())}}


def _conv_shapes(model: nn.Module, convs: dict[str, nn.Module], feeds: dict[str, np.ndarray]
                 ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The input and output shapes of each convolution on ``feeds``."""
    ins: dict[str, tuple[int, ...]] = {}
    outs: dict[str, tuple[int, ...]] = {}

    def keep(name: str) -> Any:
        def hook(_: nn.Module, args: tuple, out: torch.Tensor) -> None:  # returns nothing: nothing is changed
            ins.setdefault(name, tuple(args[0].shape))
            outs.setdefault(name, tuple(out.shape))
        return hook

    hooks = [c.register_forward_hook(keep(n)) for n, c in convs.items()]
    try:
        with torch.inference_mode():
            model(*(torch.from_numpy(v) for v in feeds.values()))
    finally:
        for h in hooks:
            h.remove()
    return ins, outs
