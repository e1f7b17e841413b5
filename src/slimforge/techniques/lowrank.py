"""Low-rank factorization of Linear and Conv2d layers by truncated SVD.

A layer ``W`` (out x in) becomes ``B @ A`` with ``A`` (r x in) and ``B`` (out x r); a convolution's kernel is
flattened to (out x in*kh*kw) and becomes a ``kh x kw`` convolution to ``r`` channels followed by a 1x1 one. The
rank comes from a ratio of the full rank or from the share of spectral energy to keep. A layer is replaced only when
that makes it smaller. An optional fine-tune (MSE to the original outputs, shared trainer) recovers accuracy.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from slimforge.core.artifact import Artifact, Check, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.torch_utils import set_training


@dataclass(frozen=True, kw_only=True, slots=True)
class LowRankConfig(Config):
    """Truncated-SVD factorization.

    Example:
        >>> LowRankConfig(ratio=0.5, layers=("*intermediate.dense", "*output.dense")).ratio
        0.5
    """

    kind = "lowrank"
    ratio: float | None = 0.5  # rank = ratio * full rank
    energy: float | None = None  # or: the smallest rank keeping this share of sum(s^2)
    layers: tuple[str, ...] = ("*",)  # module-name globs
    round_to: int = 8
    min_cosine: float = 0.5
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if (self.ratio is None) == (self.energy is None):
            raise ConfigError("set exactly one of ratio (0, 1) or energy (0, 1]")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"energy must be in (0, 1], got {self.energy}")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {self.round_to}")


def _rank(s: torch.Tensor, cfg: LowRankConfig) -> int:
    full = len(s)
    if cfg.ratio is not None:
        r = max(1, int(round(full * cfg.ratio)))
    else:
        share = torch.cumsum(s**2, 0) / torch.sum(s**2)
        r = int(torch.searchsorted(share, torch.tensor(cfg.energy, dtype=share.dtype)).item()) + 1
    r = -(-r // cfg.round_to) * cfg.round_to
    return min(r, full)


def factorize(layer: nn.Module, cfg: LowRankConfig) -> tuple[nn.Module, int] | None:
    """The factorized replacement of ``layer`` and its rank, or None when it would not be smaller."""
    w = layer.weight.detach().float()
    if isinstance(layer, nn.Linear):
        mat = w
    elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
        mat = w.reshape(w.shape[0], -1)
    else:
        return None
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = _rank(s, cfg)
    out_f, in_f = mat.shape
    if r * (out_f + in_f) >= out_f * in_f:
        return None
    a = (torch.diag(s[:r].sqrt()) @ vh[:r]).to(layer.weight.dtype)  # r x in
    b = (u[:, :r] @ torch.diag(s[:r].sqrt())).to(layer.weight.dtype)  # out x r
    if isinstance(layer, nn.Linear):
        first = nn.Linear(in_f, r, bias=False)
        second = nn.Linear(r, out_f, bias=layer.bias is not None)
        first.weight.data.copy_(a)
        second.weight.data.copy_(b)
    else:
        first = nn.Conv2d(layer.in_channels, r, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(r, layer.out_channels, 1, bias=layer.bias is not None)
        first.weight.data.copy_(a.reshape(r, *w.shape[1:]))
        second.weight.data.copy_(b.reshape(layer.out_channels, r, 1, 1))
    if layer.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second), r


@implements(LowRankConfig, fmt=Format.TORCH)
def _lowrank_torch(art: Artifact, cfg: LowRankConfig, ctx: RunContext) -> Artifact:
    module = copy.deepcopy(art.handle)
    set_training(module, False)
    before = sum(p.numel() for p in module.parameters())
    replaced: dict[str, int] = {}
    for name, layer in list(module.named_modules()):
        if not name or not any(fnmatch.fnmatch(name, g) for g in cfg.layers):
            continue
        made = factorize(layer, cfg) if isinstance(layer, (nn.Linear, nn.Conv2d)) else None
        if made is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, made[0])
        replaced[name] = made[1]
    if not replaced:
        raise TechniqueFailed(f"no layer of {art.name} matching {list(cfg.layers)} gets smaller at this rank")
    after = sum(p.numel() for p in module.parameters())
    child = art.derive(Step("lowrank", cfg.to_dict()), handle=module, path=None,
                       meta={"factorized_layers": replaced, "parameters_before": before, "parameters_after": after})
    child = child.with_check(Check("lowrank_size", after < before,
                                   {"parameters_before": float(before), "parameters_after": float(after),
                                    "layers": float(len(replaced))},
                                   f"{len(replaced)} layers factorized: {before:,} -> {after:,} parameters"))
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="lowrank_fidelity",
                                           data=ctx.calibration_data))
