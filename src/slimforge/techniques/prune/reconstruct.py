"""Least-squares reconstruction after structured pruning (no training).

Removing attention heads or FFN neurons leaves each *consumer* layer (the Linear that reads the pruned features: the
attention output projection, the FFN down projection, a classifier after pruned channels) summing fewer inputs, so
its output drifts from the original. For each consumer, in model order, this solves a ridge-regularised least-squares
problem for its new weights and bias: its input in the pruned model (earlier layers already reconstructed) should give
the output the same layer produces inside the original model, on the same data. Padding tokens are left out.

This is the "mask tuning" step of Kwon et al., *A Fast Post-Training Pruning Framework for Transformers* (NeurIPS
2022), solved against the original model's activations so that each layer also corrects the drift of the ones before
it. Torch-Pruning removes the structures; it has no such step. The normal equations are accumulated in float64 over
the data in streaming form, so the memory is that of one ``(in + 1) x (in + 1)`` matrix per layer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


class _Stop(Exception):
    """Raised by a hook once the layer of interest has run: the rest of the forward pass is not needed."""


@dataclass
class LayerFit:
    name: str
    inputs_before: int
    inputs_after: int
    rel_error_before: float  # ||Y_pruned - Y_original||^2 / ||Y_original - mean||^2 on the data, before and after
    rel_error_after: float
    tokens: int

    def to_dict(self) -> dict:
        return {"layer": self.name, "inputs": [self.inputs_before, self.inputs_after],
                "rel_error_before": round(self.rel_error_before, 6), "rel_error_after": round(self.rel_error_after, 6),
                "tokens": self.tokens}


def token_rows(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """A layer's activations as float64 CPU rows ``(tokens, features)``, padding tokens left out when ``keep`` (the
    flattened attention mask > 0) has one entry per row."""
    t = t.detach()
    t = t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t[None]
    if keep is not None and len(keep) == len(t):
        t = t[keep]
    return t.double().cpu()


def consumers(original: nn.Module, pruned: nn.Module, ignore: Sequence[str] = ()) -> list[tuple[str, nn.Linear,
                                                                                                nn.Linear]]:
    """``(name, original, pruned)`` for every Linear whose inputs were pruned and whose outputs were kept."""
    orig = dict(original.named_modules())
    out = []
    for name, mod in pruned.named_modules():
        ref = orig.get(name)
        if (isinstance(mod, nn.Linear) and isinstance(ref, nn.Linear) and mod.in_features < ref.in_features
                and mod.out_features == ref.out_features and not any(fnmatch.fnmatch(name, g) for g in ignore)):
            out.append((name, ref, mod))
    return out


def reconstruct(original: nn.Module, pruned: nn.Module, batches: Sequence[Sequence[torch.Tensor]],
                mask_index: int | None = None, ridge: float = 1e-3, ignore: Sequence[str] = ()) -> list[LayerFit]:
    """Refit the consumers of pruned features in ``pruned`` (in place) to reproduce ``original``'s outputs of the
    same layers on ``batches`` (tuples of positional input tensors; ``mask_index`` names the attention mask whose
    zeros are padding). Returns, per layer, the relative output error before and after.

    Example:
        >>> import copy, torch
        >>> torch.manual_seed(0) and None
        >>> big = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> small = copy.deepcopy(big)
        >>> small[0] = torch.nn.Linear(8, 16); small[0].weight.data = big[0].weight.data[:16].clone()
        >>> small[0].bias.data = big[0].bias.data[:16].clone()
        >>> small[2] = torch.nn.Linear(16, 4)
        >>> fits = reconstruct(big, small, [(torch.randn(256, 8),)])
        >>> fits[0].rel_error_after < fits[0].rel_error_before
        True
    """
    fits = []
    for name, ref, mod in consumers(original, pruned, ignore):
        fits.append(_fit_layer(original, pruned, name, ref, mod, batches, mask_index, ridge))
    return fits


def _fit_layer(original: nn.Module, pruned: nn.Module, name: str, ref: nn.Linear, mod: nn.Linear,
               batches: Sequence[Sequence[torch.Tensor]], mask_index: int | None, ridge: float) -> LayerFit:
    has_bias = mod.bias is not None
    n_in = mod.in_features + int(has_bias)
    xtx = torch.zeros(n_in, n_in, dtype=torch.float64)
    xty = torch.zeros(n_in, mod.out_features, dtype=torch.float64)
    yty = torch.zeros((), dtype=torch.float64)
    ysum = torch.zeros(mod.out_features, dtype=torch.float64)
    count = 0
    captured: dict[str, torch.Tensor] = {}

    def grab_output(_m, _inp, out):
        captured["y"] = out
        raise _Stop

    def grab_input(_m, inp):
        captured["x"] = inp[0]
        raise _Stop

    device = next(pruned.parameters()).device
    h_ref = ref.register_forward_hook(grab_output)
    h_mod = mod.register_forward_pre_hook(grab_input)
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = [t.to(device) for t in batch]
                for model in (original, pruned):
                    try:
                        model(*inputs)
                    except _Stop:
                        pass
                keep = inputs[mask_index].reshape(-1) > 0 if mask_index is not None else None
                x, y = token_rows(captured.pop("x"), keep), token_rows(captured.pop("y"), keep)
                if has_bias:
                    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                xtx += x.T @ x
                xty += x.T @ y
                yty += (y * y).sum()
                ysum += y.sum(0)
                count += len(x)
    finally:
        h_ref.remove()
        h_mod.remove()
    if count == 0:
        raise ValueError(f"no data reached layer {name}")
    w_old = mod.weight.detach().double().cpu().T
    if has_bias:
        w_old = torch.cat([w_old, mod.bias.detach().double().cpu()[None]], 0)
    diag = torch.diagonal(xtx)[:mod.in_features]
    reg = torch.zeros(n_in, dtype=torch.float64)
    reg[:mod.in_features] = ridge * float(diag.mean()) + 1e-12
    w_new = torch.linalg.solve(xtx + torch.diag(reg), xty)
    variance = float(yty - (ysum * ysum).sum() / count)

    def sq_error(w: torch.Tensor) -> float:
        return float(yty - 2 * (w * xty).sum() + (w * (xtx @ w)).sum())

    before, after = sq_error(w_old) / variance, sq_error(w_new) / variance
    if after < before:
        mod.weight.data = w_new[:mod.in_features].T.to(mod.weight.dtype).to(mod.weight.device).contiguous()
        if has_bias:
            mod.bias.data = w_new[-1].to(mod.bias.dtype).to(mod.bias.device)
    else:
        after = before
    return LayerFit(name, ref.in_features, mod.in_features, before, after, count)
