"""Data-driven importance for structured pruning (criterion ``lsq``), as a Torch-Pruning ``Importance``.

Weight magnitude says little about which attention heads a transformer can spare. With data, this criterion runs the
model once and scores, for every Linear whose inputs Torch-Pruning would remove:

- attention heads (the inputs of the attention output projection): by greedy backward elimination, removing one at
  a time the head whose loss the remaining heads can best make up for after the least-squares refit of the projection
  (:mod:`slimforge.techniques.prune.reconstruct`), computed exactly from the Gram matrix of its inputs: the error of
  the best refit from a subset ``S`` of inputs is ``tr(W'GW) - tr(W'G[:,S] G[S,S]^-1 G[S,:]W)``;
- other input channels (FFN neurons, CNN channels feeding a Linear): ``||W[:, c]|| * rms(x_c)``, the size of what
  the channel contributes (Sun et al., *Wanda*, 2023).

Groups it has no statistics for fall back to L1 magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from slimforge.techniques.prune.reconstruct import token_rows


def _head_elimination(gram: torch.Tensor, weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Scores per head (higher = keep): heads removed earlier by greedy least-squares elimination score lower.

    Example:
        >>> g = torch.eye(5, dtype=torch.float64); g[4, 4] = 10.0  # 4 inputs + bias; inputs 2 and 3 are head 1
        >>> w = torch.tensor([[1.0], [1.0], [0.1], [0.1], [0.0]], dtype=torch.float64)
        >>> _head_elimination(g, w, 2).argmin().item()  # head 1 contributes least
        1
    """
    n_in = gram.shape[0] - 1
    dim = n_in // heads
    total = float(torch.trace(weight.T @ gram @ weight))
    alive = list(range(heads))
    score = torch.zeros(heads, dtype=torch.float64)
    rank = 0
    while len(alive) > 1:
        best, best_err = None, None
        for h in alive:
            keep = [c for k in alive if k != h for c in range(k * dim, (k + 1) * dim)] + [n_in]
            idx = torch.tensor(keep)
            gs = gram[idx][:, idx] + 1e-9 * torch.eye(len(idx), dtype=gram.dtype)
            b = gram[idx] @ weight
            err = total - float((b * torch.linalg.solve(gs, b)).sum())
            if best_err is None or err < best_err:
                best, best_err = h, err
        score[best] = rank
        rank += 1
        alive.remove(best)
    score[alive[0]] = rank
    return score


def _out_projection(model: nn.Module, block_name: str) -> nn.Linear | None:
    """The output projection of a self-attention block: BERT's ``<parent>.output.dense`` or a sibling ``out_proj``/
    ``o_proj``/``dense``."""
    parent = block_name.rpartition(".")[0]
    mods = dict(model.named_modules())
    for cand in (f"{parent}.output.dense", f"{block_name}.out_proj", f"{block_name}.o_proj", f"{parent}.out_proj",
                 f"{parent}.o_proj"):
        if isinstance(mods.get(cand), nn.Linear):
            return mods[cand]
    return None


class DataImportance:
    """Torch-Pruning importance from activation statistics (see the module docstring); build it with :meth:`fit`."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback
        self.head_scores: dict[int, torch.Tensor] = {}
        self.rms: dict[int, torch.Tensor] = {}

    def fit(self, model: nn.Module, blocks: Sequence[nn.Module], batches: Sequence[Sequence[torch.Tensor]],
            mask_index: int | None) -> DataImportance:
        names = {id(m): n for n, m in model.named_modules()}
        projections = {}
        for att in blocks:
            proj = _out_projection(model, names[id(att)])
            if proj is not None:
                projections[id(proj)] = (proj, att.num_attention_heads)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        sq = {id(m): torch.zeros(m.in_features, dtype=torch.float64) for m in linears}
        grams = {k: torch.zeros(p.in_features + 1, p.in_features + 1, dtype=torch.float64)
                 for k, (p, _) in projections.items()}
        keep: torch.Tensor | None = None  # the current batch's non-padding tokens

        def hook(mod, inp):
            x = token_rows(inp[0], keep)
            sq[id(mod)] += (x * x).sum(0)
            if id(mod) in grams:
                x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                grams[id(mod)] += x1.T @ x1

        count = 0
        handles = [m.register_forward_pre_hook(hook) for m in linears]
        try:
            with torch.no_grad():
                for batch in batches:
                    keep = batch[mask_index].reshape(-1) > 0 if mask_index is not None else None
                    count += int(keep.sum()) if keep is not None else len(batch[0])
                    model(*batch)
        finally:
            for h in handles:
                h.remove()
        n = max(count, 1)
        self.rms = {k: (v / n).sqrt().float() for k, v in sq.items()}
        for k, (proj, heads) in projections.items():
            w = torch.cat([proj.weight.detach().double().T, (proj.bias.detach().double()[None] if proj.bias is not None
                                                             else torch.zeros(1, proj.out_features,
                                                                              dtype=torch.float64))], 0)
            self.head_scores[k] = _head_elimination(grams[k], w, heads).float()
        return self

    def __call__(self, group, **kwargs) -> torch.Tensor:
        dep, idxs = group[0].dep, group[0].idxs
        mod = dep.target.module
        if isinstance(mod, nn.Linear) and getattr(dep.handler, "__name__", "") == "prune_in_channels":
            if id(mod) in self.head_scores and len(idxs) == mod.in_features:  # the group covers all the inputs
                h = self.head_scores[id(mod)]
                return h.repeat_interleave(mod.in_features // len(h))
            if id(mod) in self.rms and len(idxs) == mod.in_features:
                return mod.weight.detach().float().norm(dim=0).cpu() * self.rms[id(mod)]
        return self.fallback(group, **kwargs)
