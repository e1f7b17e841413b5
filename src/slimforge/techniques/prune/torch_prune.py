"""Pruning of PyTorch models.

Structured pruning removes whole channels/filters (CNNs), attention heads and FFN neurons (BERT-class transformers)
with Torch-Pruning's dependency graph, so the model is physically smaller: fewer parameters and FLOPs, and faster on
dense kernels. Importance: L1, L2, Taylor (first-order, from gradients on the data) or a random baseline; per layer or
global; channel counts rounded to a hardware-friendly multiple. An iterative schedule prunes a step, fine-tunes
(shared trainer), and repeats.

Unstructured pruning zeroes the smallest weights (global or per layer) with ``torch.nn.utils.prune`` and makes the
masks permanent. Dense kernels do not get faster from zeros: the report says so, and measures it.
"""

from __future__ import annotations

import copy
import enum
import fnmatch
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from slimforge.core.artifact import Artifact, Check, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.techniques.prune.importance import DataImportance
from slimforge.torch_utils import run_module, set_training
from slimforge.train import TrainConfig, train
from slimforge.train.data import collect, mask_index, supervised_loss, tensor_dataset

log = logging.getLogger(__name__)


class Criterion(str, enum.Enum):
    L1 = "l1"
    L2 = "l2"
    TAYLOR = "taylor"
    RANDOM = "random"
    LSQ = "lsq"  # data-driven: heads by least-squares elimination, other channels by |W| * rms(activation)


@dataclass(frozen=True, kw_only=True, slots=True)
class PruneConfig(Config):
    """Pruning settings.

    Example:
        >>> PruneConfig(ratio=0.5, criterion="taylor", iterative_steps=3).criterion.value
        'taylor'
    """

    kind = "prune"
    ratio: float = 0.5
    structured: bool = True
    criterion: Criterion = Criterion.L1
    global_pruning: bool = False
    round_to: int = 8
    iterative_steps: int = 1
    finetune_epochs: int = 0  # per step; needs data
    lr: float = 1e-3
    ignore: tuple[str, ...] = ()  # module-name globs never pruned (the output layer is always kept)
    heads: bool = True  # transformers: prune whole attention heads (and FFN neurons)
    num_samples: int = 2048
    min_cosine: float = 0.0  # pruning without fine-tuning changes outputs a lot: the check records it
    reconstruct: bool = True  # with data: refit the layers that read pruned features by least squares (no training)
    reconstruct_samples: int = 1024
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.iterative_steps < 1 or self.round_to < 1 or self.finetune_epochs < 0:
            raise ConfigError("iterative_steps and round_to must be >= 1, finetune_epochs >= 0")


def count_flops(module: nn.Module, examples: dict[str, np.ndarray]) -> int | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*[torch.from_numpy(v) for v in examples.values()])
        return int(counter.get_total_flops())
    except Exception:  # not every module can be counted
        return None


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def attention_blocks(module: nn.Module) -> list[nn.Module]:
    """BERT-style self-attention blocks: they hold query/key/value Linears and a head count."""
    return [m for m in module.modules() if all(isinstance(getattr(m, n, None), nn.Linear)
                                                for n in ("query", "key", "value"))
            and hasattr(m, "num_attention_heads")]


def fix_attention_heads(blocks: list[nn.Module]) -> None:
    for att in blocks:
        head = getattr(att, "attention_head_size", None) or att.query.out_features // att.num_attention_heads
        att.num_attention_heads = att.query.out_features // head
        if hasattr(att, "all_head_size"):
            att.all_head_size = att.query.out_features  # the shared config keeps the original count


def _output_layers(module: nn.Module, art: Artifact) -> list[nn.Module]:
    """Layers whose outputs are the model's outputs (never pruned): the last Linear, the last Conv."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    return last[-1:] if last else []


@implements(PruneConfig, fmt=Format.TORCH)
def _prune_torch(art: Artifact, cfg: PruneConfig, ctx: RunContext) -> Artifact:
    module = copy.deepcopy(art.handle)
    set_training(module, False)
    params_before, flops_before = _params(module), count_flops(module, art.examples)
    needs_targets = cfg.finetune_epochs > 0 or cfg.criterion is Criterion.TAYLOR
    needs_inputs = cfg.structured and (cfg.criterion is Criterion.LSQ
                                       or (cfg.reconstruct and ctx.calibration_data is not None))
    data = has_labels = None
    batches: list[tuple[torch.Tensor, ...]] = []  # model inputs for the lsq criterion and the least-squares refit
    if needs_targets:
        data, has_labels = tensor_dataset(art, ctx.calibration_data, limit=cfg.num_samples,
                                          teacher=lambda feeds: run_module(art.handle, feeds)[0])
        inputs = data.tensors[:len(art.io.input_names)]
    elif needs_inputs:  # no targets needed: the teacher is not run
        inputs = collect(art, ctx.calibration_data, limit=cfg.reconstruct_samples)[0]
    if needs_inputs:
        n = min(len(inputs[0]), cfg.reconstruct_samples)
        batches = [tuple(t[i:i + 64] for t in inputs) for i in range(0, n, 64)]
    if cfg.structured:
        detail = _structured(module, art, cfg, ctx, data, has_labels, batches)
    else:
        detail = _unstructured(module, cfg)
        if data is not None and cfg.finetune_epochs:
            _finetune(module, cfg, ctx, data, has_labels, 1)
    params_after, flops_after = _params(module), count_flops(module, art.examples)
    meta = {"pruning": detail, "parameters_before": params_before, "parameters_after": params_after,
            "flops_before": flops_before, "flops_after": flops_after}
    child = art.derive(Step("prune", cfg.to_dict()), handle=module, path=None, meta=meta)
    metrics = {"parameters_before": float(params_before), "parameters_after": float(params_after),
               "param_reduction": params_before / max(params_after, 1)}
    if flops_before and flops_after:
        metrics.update(flops_before=float(flops_before), flops_after=float(flops_after),
                       flop_reduction=flops_before / max(flops_after, 1))
    text = (f"{params_before:,} -> {params_after:,} parameters ({metrics['param_reduction']:.2f}x fewer)"
            if cfg.structured else f"{detail['sparsity']:.1%} of prunable weights are zero; dense kernels do not "
                                   "run faster on zeros (measure before shipping)")
    child = child.with_check(Check("prune_size", True, metrics, text))
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="prune_fidelity",
                                           data=ctx.calibration_data))


def _structured(module: nn.Module, art: Artifact, cfg: PruneConfig, ctx: RunContext, data, has_labels,
                batches: list[tuple[torch.Tensor, ...]]) -> dict:
    tp = require("torch_pruning", extra="torch", package="torch-pruning")
    importance = {Criterion.L1: lambda: tp.importance.MagnitudeImportance(p=1),
                  Criterion.L2: lambda: tp.importance.MagnitudeImportance(p=2),
                  Criterion.TAYLOR: lambda: tp.importance.TaylorImportance(),
                  Criterion.RANDOM: lambda: tp.importance.RandomImportance(),
                  Criterion.LSQ: lambda: DataImportance(tp.importance.MagnitudeImportance(p=1))}[cfg.criterion]()
    ignored = _output_layers(module, art) + [m for n, m in module.named_modules()
                                             if n and any(fnmatch.fnmatch(n, g) for g in cfg.ignore)]
    blocks = attention_blocks(module) if cfg.heads else []
    if blocks:  # transformers: prune heads and FFN neurons, keep the hidden size (the residual stream)
        hidden = blocks[0].query.in_features
        qkv = {id(lin) for att in blocks for lin in (att.query, att.key, att.value)}
        ignored += [m for m in module.modules()
                    if (isinstance(m, nn.Linear) and m.out_features == hidden and id(m) not in qkv)
                    or isinstance(m, nn.Embedding)]
    num_heads = {}
    for att in blocks:
        for lin in (att.query, att.key, att.value):
            num_heads[lin] = att.num_attention_heads
    example = tuple(torch.from_numpy(v) for v in art.examples.values())
    torch.manual_seed(cfg.seed)
    try:
        pruner = tp.pruner.MetaPruner(module, example, importance=importance, pruning_ratio=cfg.ratio,
                                      global_pruning=cfg.global_pruning, iterative_steps=cfg.iterative_steps,
                                      round_to=cfg.round_to if not blocks else None, ignored_layers=ignored,
                                      num_heads=num_heads, prune_num_heads=bool(blocks), prune_head_dims=False,
                                      head_pruning_ratio=cfg.ratio if blocks else 0.0,
                                      output_transform=lambda out: out if isinstance(out, torch.Tensor) else out[0])
    except Exception as exc:
        raise TechniqueFailed(f"Torch-Pruning cannot build a dependency graph for {art.name}: "
                              f"{str(exc).splitlines()[0][:300]}") from exc
    if blocks and cfg.iterative_steps > 1 and not cfg.global_pruning:
        pruner.per_step_head_pruning_ratio = _head_ratios(blocks[0].num_attention_heads, cfg.ratio,
                                                          cfg.iterative_steps)
    original = None
    if batches and cfg.reconstruct:  # the reference for the refit (a copy: the user's model is never hooked)
        original = copy.deepcopy(art.handle)
        set_training(original, False)
    history = []
    for step in range(cfg.iterative_steps):
        if cfg.criterion is Criterion.TAYLOR:
            _taylor_gradients(module, data, has_labels)
        if cfg.criterion is Criterion.LSQ:
            importance.fit(module, blocks, batches, mask_index(art))
        pruner.step()
        module.zero_grad(set_to_none=True)
        fix_attention_heads(blocks)
        row = {"step": step + 1, "parameters": _params(module)}
        if original is not None:
            row["reconstruction"] = _reconstruct(original, module, batches, mask_index(art), cfg.ignore)
        if data is not None and cfg.finetune_epochs:
            row["finetune"] = _finetune(module, cfg, ctx, data, has_labels, step + 1)
        history.append(row)
        ctx.report_progress("prune", step + 1, cfg.iterative_steps)
    set_training(module, False)
    out = {"structured": True, "criterion": cfg.criterion.value, "ratio": cfg.ratio, "steps": history}
    if blocks:
        out["attention_heads"] = [att.num_attention_heads for att in blocks]
    return out


def _head_ratios(heads: int, ratio: float, steps: int) -> list[float]:
    """Per-step head ratios for Torch-Pruning's local head pruning, which removes ``ceil(r * current heads)`` at each
    step while its linear schedule gives cumulative ratios (so 3 steps to 50% of 12 heads would leave 3, not 6).
    These remove ``ceil(ratio * heads * k / steps)`` heads in total by step ``k``, as one step would.

    Example:
        >>> import math
        >>> h = 12
        >>> for r in _head_ratios(12, 0.5, 3)[1:]:
        ...     h -= math.ceil(r * h)
        >>> h
        6
    """
    import math

    removed = [math.ceil(ratio * heads * k / steps - 1e-9) for k in range(steps + 1)]
    out = [0.0]
    for k in range(1, steps + 1):
        left = heads - removed[k - 1]
        out.append(max(0.0, (removed[k] - removed[k - 1] - 1e-6) / left))
    return out


def _reconstruct(original: nn.Module, module: nn.Module, batches: list[tuple[torch.Tensor, ...]],
                 mask: int | None, ignore: tuple[str, ...]) -> list[dict]:
    """Least-squares refit of the layers that read pruned features, against the original model (see
    :mod:`slimforge.techniques.prune.reconstruct`)."""
    from slimforge.techniques.prune.reconstruct import reconstruct

    set_training(module, False)
    try:
        fits = reconstruct(original, module, batches, mask_index=mask, ignore=ignore)
    except (RuntimeError, ValueError) as exc:
        raise TechniqueFailed(f"least-squares reconstruction after pruning failed: {str(exc).splitlines()[0][:300]}; "
                              "pass reconstruct=False to skip it") from exc
    return [f.to_dict() for f in fits]


def _taylor_gradients(module: nn.Module, data, has_labels: bool) -> None:
    set_training(module, False)  # gradients of the eval-mode function
    module.zero_grad(set_to_none=True)
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    loss_fn = supervised_loss(has_labels)
    for i, batch in enumerate(loader):
        loss_fn(module, batch).backward()
        if i >= 3:
            break


def _finetune(module: nn.Module, cfg: PruneConfig, ctx: RunContext, data, has_labels: bool, step: int) -> dict:
    result = train(module, supervised_loss(has_labels), data,
                   TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.lr, seed=cfg.seed + step, device="cpu"),
                   progress=ctx.progress, task=f"fine-tune (step {step})")
    return {"epochs": result.epochs_run, "loss": result.history[-1]["loss"]}


def _unstructured(module: nn.Module, cfg: PruneConfig) -> dict:
    from torch.nn.utils import prune

    targets = [(m, "weight") for n, m in module.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
               and not any(fnmatch.fnmatch(n, g) for g in cfg.ignore)]
    if not targets:
        raise TechniqueFailed("no Linear or Conv weights to prune")
    method = prune.L1Unstructured if cfg.criterion is not Criterion.RANDOM else prune.RandomUnstructured
    if cfg.global_pruning:
        prune.global_unstructured(targets, pruning_method=method, amount=cfg.ratio)
    else:
        for m, name in targets:
            (prune.random_unstructured if cfg.criterion is Criterion.RANDOM else prune.l1_unstructured)(
                m, name, amount=cfg.ratio)
    for m, name in targets:
        prune.remove(m, name)  # masks made permanent: plain weights with zeros
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    return {"structured": False, "sparsity": zeros / total, "criterion": cfg.criterion.value}
