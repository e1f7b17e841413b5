"""The ``subnet`` space: sub-networks of the user's own transformer encoder. Per layer, whether it is kept (elastic
depth), how many attention heads and how many FFN neurons it keeps (elastic width, FFN sizes in multiples of 64).

A candidate is cut from a copy of the model with Torch-Pruning (per-layer head and FFN ratios), which heads and
neurons go chosen by the data-driven importance of the ``lsq`` pruning criterion (fitted once, on the full model); a
dropped layer becomes a pass-through. The layers that read pruned features are then refitted by least squares against
the original (``techniques.prune.reconstruct``), and the candidate is scored by its outputs' cosine to the original's on
held-out inputs: no training. Its latency is predicted from a table of measured layer times (``SubnetLatency``).
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
from slimforge.techniques.prune.importance import DataImportance
from slimforge.techniques.prune.reconstruct import reconstruct
from slimforge.techniques.prune.torch_prune import attention_blocks, fix_attention_heads
from slimforge.torch_utils import set_training

FFN_MULTIPLE = 64
TABLE_SPEC = BenchSpec(warmup=2, repeats=8, min_time_s=0.05, max_time_s=8.0, rounds=3, max_rounds=5, rel_ci=0.1)


@dataclass(frozen=True)
class SubnetArch:
    """Per layer ``(heads, ffn)`` kept; ``(0, 0)``: the layer is dropped."""

    layers: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        kept = [f"{h}h/{f}" for h, f in self.layers if h]
        return f"{len(kept)} layers: " + " ".join(kept)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [{"heads": h, "ffn": f} for h, f in self.layers],
                "depth": sum(1 for h, _ in self.layers if h)}


@dataclass(frozen=True)
class Geometry:
    """Where the layers of an encoder are and how wide they are."""

    container: str  # the ModuleList holding the layers
    layers: int
    heads: int
    ffn: int
    hidden: int
    ffn_name: str = "intermediate.dense"  # the FFN's up projection, inside each layer (found by shape on the original)

    def choices(self) -> tuple[list[int], list[int]]:
        """Head counts and FFN sizes a layer may keep.

        Example:
            >>> Geometry("encoder.layer", 6, 12, 1536, 384).choices()
            ([2, 4, 6, 8, 10, 12], [384, 576, 768, 960, 1152, 1344, 1536])
        """
        step = max(1, self.heads // 6)
        heads = list(range(self.heads % step or step, self.heads + 1, step))
        unit = max(FFN_MULTIPLE, (self.ffn // 8) // FFN_MULTIPLE * FFN_MULTIPLE)
        ffn = sorted({min(self.ffn, max(unit, k * unit)) for k in range(2, self.ffn // unit + 1)} | {self.ffn})
        ffn = [f for f in ffn if f >= self.ffn // 4]
        return heads, ffn

    def full(self) -> SubnetArch:
        return SubnetArch(tuple((self.heads, self.ffn) for _ in range(self.layers)))


def _ffn_name(layer: nn.Module, hidden: int) -> str | None:
    """The FFN's up projection in an unpruned layer: the one Linear from ``hidden`` to another size that is not an
    attention projection (after pruning it may be ``hidden`` wide: it is then found by this name)."""
    att = attention_blocks(layer)[0]
    qkv = {id(att.query), id(att.key), id(att.value)}
    ups = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear) and id(m) not in qkv
           and m.in_features == hidden and m.out_features != hidden]
    return ups[0] if len(ups) == 1 else None


def _ffn_in(layer: nn.Module, geo: Geometry) -> nn.Linear:
    return layer.get_submodule(geo.ffn_name)  # type: ignore[return-value]


def geometry(module: nn.Module) -> Geometry:
    """Find the encoder's layer list (a ModuleList whose every entry holds one attention block and one FFN)."""
    for name, mod in module.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and all(len(attention_blocks(m)) == 1 for m in mod):
            att = attention_blocks(mod[0])[0]
            hidden = att.query.in_features
            names = {_ffn_name(m, hidden) for m in mod}
            if len(names) == 1 and None not in names:
                ffn_name = names.pop()
                widths = {m.get_submodule(ffn_name).out_features for m in mod}  # type: ignore[arg-type]
                if len(widths) == 1:
                    return Geometry(name, len(mod), int(att.num_attention_heads), widths.pop(), hidden,
                                    ffn_name)  # type: ignore[arg-type]
    raise ConfigError("the subnet space takes transformer encoders (a list of layers, each with query/key/value "
                      "attention and an FFN); for an image classifier use --space mobilenet_v3")


class Skip(nn.Module):
    """A dropped layer: hands its input on (in the layer's own output form)."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states,) if self.as_tuple else hidden_states


class SubnetBuilder:
    """Cuts candidates from ``model``: fits the importance once, then builds and refits each ``SubnetArch``."""

    def __init__(self, model: nn.Module, geo: Geometry, batches: Sequence[Sequence[torch.Tensor]],
                 mask_index: int | None) -> None:
        self.original = copy.deepcopy(model)
        set_training(self.original, False)
        self.geo, self.batches, self.mask_index = geo, batches, mask_index
        blocks = attention_blocks(self.original)
        self._names = {id(m): n for n, m in self.original.named_modules()}
        tp = require("torch_pruning", extra="torch", package="torch-pruning")
        self._fallback = tp.importance.MagnitudeImportance(p=1)
        self.importance = DataImportance(self._fallback).fit(self.original, blocks, batches, mask_index)
        layer0 = self._layers(self.original)[0]
        with torch.no_grad():
            out = layer0(torch.zeros(1, 2, geo.hidden))
        self._tuple_out = isinstance(out, tuple)

    def _layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.geo.container)  # type: ignore[return-value]

    def _importance_for(self, model: nn.Module) -> DataImportance:
        """The importance fitted on the original, keyed to the same-named modules of ``model``."""
        by_name = {n: m for n, m in model.named_modules()}
        imp = DataImportance(self._fallback)
        for src, dst in ((self.importance.head_scores, imp.head_scores), (self.importance.rms, imp.rms)):
            for key, value in src.items():
                mod = by_name.get(self._names.get(key, ""))
                if mod is not None:
                    dst[id(mod)] = value
        return imp

    def build(self, arch: SubnetArch, *, refit: bool = True, batches: Sequence[Sequence[torch.Tensor]] | None = None
              ) -> tuple[nn.Module, list[dict]]:
        """The candidate, and the least-squares refit's per-layer errors (refitted on ``batches``, by default those
        the importance was fitted on)."""
        geo = self.geo
        model = copy.deepcopy(self.original)
        layers = self._layers(model)
        ratios, head_ratios = {}, {}
        for i, (h, f) in enumerate(arch.layers):
            if not h:
                layers[i] = Skip(self._tuple_out)
                continue
            if f < geo.ffn:
                ratios[_ffn_in(layers[i], geo)] = 1.0 - f / geo.ffn
            if h < geo.heads:
                head_ratios[attention_blocks(layers[i])[0]] = (geo.heads - h - 1e-6) / geo.heads  # TP takes ceil
        blocks = attention_blocks(model)
        if ratios or head_ratios:
            _prune(model, blocks, self._importance_for(model), ratios, head_ratios, geo.hidden, self.batches[0])
        fix_attention_heads(blocks)
        got = tuple((int(b.num_attention_heads), _ffn_in(layer, geo).out_features)
                    if not isinstance(layer, Skip) else (0, 0)
                    for layer, b in zip(layers, _blocks_or_none(layers)))
        if got != arch.layers:
            raise TechniqueFailed(f"Torch-Pruning cut {got} where {arch.layers} was asked for")
        fits: list[dict] = []
        if refit:
            fits = [f.to_dict() for f in reconstruct(self.original, model, self.batches if batches is None else batches,
                                                     mask_index=self.mask_index)]
        set_training(model, False)
        return model, fits


def _blocks_or_none(layers: nn.ModuleList) -> list[Any]:
    return [None if isinstance(layer, Skip) else attention_blocks(layer)[0] for layer in layers]


def _prune(model: nn.Module, blocks: list[nn.Module], importance: DataImportance, ratios: dict, head_ratios: dict,
           hidden: int, example: Sequence[torch.Tensor]) -> None:
    tp = require("torch_pruning", extra="torch", package="torch-pruning")
    qkv = {id(lin) for att in blocks for lin in (att.query, att.key, att.value)}
    ignored = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == hidden
                                               and id(m) not in qkv) or isinstance(m, nn.Embedding)]
    ups = {id(m) for m in ratios}
    ignored += [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in qkv and id(m) not in ups
                and m not in ignored]
    num_heads = {lin: att.num_attention_heads for att in blocks for lin in (att.query, att.key, att.value)}
    # an attention group is pruned (by whole heads: prune_head_dims=False) only inside a scope with a ratio > 0
    scopes = {**ratios, **{(att.query, att.key, att.value): r for att, r in head_ratios.items()}}
    pruner = tp.pruner.MetaPruner(
        model, tuple(t[:2] for t in example), importance=importance, pruning_ratio=0.0, pruning_ratio_dict=scopes,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=0.0,
        head_pruning_ratio_dict={lin: r for att, r in head_ratios.items() for lin in (att.query, att.key, att.value)},
        round_to=None, output_transform=lambda out: out if isinstance(out, torch.Tensor) else out[0])
    pruner.step()
    model.zero_grad(set_to_none=True)


class SubnetLatency:
    """Measured latency, cheaply: the model with every layer dropped is timed once (embeddings, pooling, the call),
    and each distinct ``(heads, ffn)`` layer once, alone, on hidden states of the data's shape, interleaved with an
    empty module that carries only the per-call overhead. A candidate's prediction is the first plus its layers."""

    def __init__(self, builder: SubnetBuilder, feeds: dict[str, np.ndarray], *, runtime: str = "torch",
                 threads: int | None = None, spec: BenchSpec = TABLE_SPEC) -> None:
        self.builder, self.feeds, self.runtime, self.threads, self.spec = builder, feeds, runtime, threads, spec
        self.batch = len(next(iter(feeds.values())))
        self.seq = int(next(iter(feeds.values())).shape[1]) if next(iter(feeds.values())).ndim > 1 else 1
        self.ms: dict[tuple[int, int], float] = {}
        self.base_ms: float | None = None
        self.measured = 0

    def _open(self, module: nn.Module, feeds: dict[str, np.ndarray]) -> Any:
        from slimforge.io.models import load
        from slimforge.runtimes import open_session

        return open_session(load(module.eval(), example_inputs=feeds), self.runtime, threads=self.threads)

    def _layer(self, heads: int, ffn: int) -> nn.Module:
        geo = self.builder.geo
        arch = SubnetArch(((heads, ffn),) + ((0, 0),) * (geo.layers - 1))
        model, _ = self.builder.build(arch, refit=False)
        return _HiddenOnly(self.builder._layers(model)[0])  # noqa: SLF001 - the builder's own layer list

    def measure(self, sigs: set[tuple[int, int]]) -> None:
        new = sorted(s for s in sigs if s not in self.ms)
        if not new and self.base_ms is not None:
            return
        hidden = {"x": np.random.default_rng(0).standard_normal(
            (self.batch, self.seq, self.builder.geo.hidden)).astype(np.float32)}
        sessions, feeds = {"(overhead)": self._open(nn.Identity(), hidden)}, {"(overhead)": {self.batch: hidden}}
        if self.base_ms is None:
            none, _ = self.builder.build(SubnetArch(((0, 0),) * self.builder.geo.layers), refit=False)
            sessions["(no layers)"], feeds["(no layers)"] = self._open(none, self.feeds), {self.batch: self.feeds}
        for h, f in new:
            sessions[f"{h}/{f}"], feeds[f"{h}/{f}"] = self._open(self._layer(h, f), hidden), {self.batch: hidden}
        try:
            comp = compare(sessions, feeds, self.spec)
        finally:
            for s in sessions.values():
                s.close()
        over = comp.timing("(overhead)", self.batch).p50
        if self.base_ms is None:
            self.base_ms = comp.timing("(no layers)", self.batch).p50
        for h, f in new:
            self.ms[(h, f)] = max(comp.timing(f"{h}/{f}", self.batch).p50 - over, 0.0)
        self.measured += len(new)

    def predict(self, arch: SubnetArch) -> float:
        sigs = {s for s in arch.layers if s[0]}
        self.measure(sigs)
        return float(self.base_ms or 0.0) + sum(self.ms[s] for s in arch.layers if s[0])

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "seq": self.seq, "threads": self.threads, "runtime": self.runtime,
                "no_layers_ms": self.base_ms, "layers_ms": {f"{h}h/{f}": v for (h, f), v in sorted(self.ms.items())}}


class _HiddenOnly(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        return out[0] if isinstance(out, tuple) else out
