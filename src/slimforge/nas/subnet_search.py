"""Search the ``subnet`` space (``nas.subnet``): Optuna's multi-objective TPE (cosine to the original up, predicted
latency down), the budgets as Optuna constraints; candidates predicted over a budget are not cut. Each candidate is
cut, refitted by least squares on the fit split and scored on a validation split; the best finalists are then timed
whole beside the original (the predictor's error is reported) and scored on a test split the search never saw."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimforge.core.context import ProgressEvent, ProgressFn
from slimforge.errors import ConfigError, MissingDependencyError
from slimforge.evaluation.metrics import cosine_similarity
from slimforge.nas.search import (FINALISTS, Constraints, SearchOutcome, measure_finalists, outcome, pareto,
                                  pick_finalists, violations)
from slimforge.nas.subnet import Geometry, SubnetArch, SubnetBuilder, SubnetLatency, geometry

log = logging.getLogger(__name__)
MAX_DRAWS = 25
FIT_BATCH = 32


@dataclass
class SubnetTrial:
    number: int
    arch: SubnetArch
    params: int
    size_mb: float
    predicted_ms: float
    accuracy: float | None = None  # mean cosine to the original on the validation split; None: not cut
    violations: list[str] = field(default_factory=list)
    measured_ms: float | None = None
    test_accuracy: float | None = None  # mean cosine on the test split
    model: nn.Module | None = field(default=None, repr=False)
    refit: list[dict] = field(default_factory=list, repr=False)

    @property
    def feasible(self) -> bool:
        return not self.violations and self.accuracy is not None

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.number, "arch": self.arch.describe(), "arch_spec": self.arch.to_dict(),
                "params": self.params, "size_mb": round(self.size_mb, 4), "predicted_ms": round(self.predicted_ms, 4),
                "val_accuracy": self.accuracy, "violations": self.violations, "measured_ms": self.measured_ms,
                "test_accuracy": self.test_accuracy}  # the subnet space's "accuracy" is cosine to the original


def _params(geo: Geometry, arch: SubnetArch, total: int, per_layer_full: int) -> int:
    """Parameters of a candidate, from the original's count: attention scales with heads, the FFN with its width."""
    head_dim = geo.hidden // geo.heads
    out = total - geo.layers * per_layer_full
    for h, f in arch.layers:
        if h:
            attn = 3 * (geo.hidden * h * head_dim + h * head_dim) + h * head_dim * geo.hidden + geo.hidden
            ffn = geo.hidden * f + f + f * geo.hidden + geo.hidden
            out += attn + ffn + (per_layer_full - _full_layer_core(geo))
    return out


def _full_layer_core(geo: Geometry) -> int:
    d = geo.hidden
    return 3 * (d * d + d) + d * d + d + d * geo.ffn + geo.ffn + geo.ffn * d + d


def _outputs(model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> np.ndarray:
    with torch.inference_mode():
        outs = []
        for b in batches:
            o = model(*b)
            o = o if isinstance(o, torch.Tensor) else (o[0] if isinstance(o, (tuple, list)) else o.last_hidden_state)
            outs.append(o.float().reshape(len(o), -1).numpy())
    return np.concatenate(outs)


def search_subnet(model: nn.Module, inputs: list[torch.Tensor], mask_index: int | None, input_names: list[str], *,
                  constraints: Constraints, trials: int = 30, time_budget_s: float | None = None,
                  threads: int | None = None, seed: int = 0, fit_samples: int = 512, score_samples: int = 128,
                  progress: ProgressFn | None = None) -> SearchOutcome:
    """Search sub-networks of ``model`` on its ``inputs`` (tensors in input order, one row per example)."""
    try:
        import optuna
    except ImportError as exc:
        raise MissingDependencyError("optuna", extra="nas") from exc
    t0 = time.perf_counter()
    geo = geometry(model)
    n = len(inputs[0])
    if n < 3 * FIT_BATCH:
        raise ConfigError(f"the subnet search needs at least {3 * FIT_BATCH} examples to fit, score and test; "
                          f"the data has {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(n // 5, FIT_BATCH)
    n_val = max(n // 5, FIT_BATCH)
    test, val, fit = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:][:fit_samples]

    def batches(idx: np.ndarray) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(t[idx[i:i + FIT_BATCH]] for t in inputs) for i in range(0, len(idx), FIT_BATCH)]

    fit_b, val_b, test_b = batches(fit), batches(val), batches(test)
    builder = SubnetBuilder(model, geo, fit_b, mask_index)
    quick = fit_b[:max(1, score_samples // FIT_BATCH)]
    ref_val, ref_test = _outputs(builder.original, val_b), _outputs(builder.original, test_b)
    b = constraints.batch
    timing_feeds = {name: t[order[:b]].numpy() for name, t in zip(input_names, inputs)}
    table = SubnetLatency(builder, timing_feeds, threads=threads)
    total = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in builder._layers(builder.original)[0].parameters())  # noqa: SLF001
    heads_choice, ffn_choice = geo.choices()
    results: list[SubnetTrial] = []
    seen: dict[SubnetArch, SubnetTrial] = {}

    def sample(trial: Any) -> SubnetArch:
        layers = []
        for i in range(geo.layers):
            if trial.suggest_categorical(f"keep{i}", [True, False]):
                layers.append((trial.suggest_categorical(f"heads{i}", heads_choice),
                               trial.suggest_categorical(f"ffn{i}", ffn_choice)))
            else:
                layers.append((0, 0))
        if not any(h for h, _ in layers):  # at least one layer stays
            layers[0] = (heads_choice[0], ffn_choice[0])
        return SubnetArch(tuple(layers))

    def objective(trial: Any) -> tuple[float, float]:
        arch = sample(trial)
        if arch in seen:
            old = seen[arch]
            trial.set_user_attr("constraint", [1.0 if old.violations else -1.0])
            return (old.accuracy or 0.0), old.predicted_ms
        params = _params(geo, arch, total, per_layer)
        pred = table.predict(arch)
        res = SubnetTrial(trial.number, arch, params, params * 4 / 1e6, pred)
        res.violations = violations(constraints, pred, res.size_mb, params, None)
        if not res.violations:  # a quick refit on a few batches ranks candidates; finalists get the full one
            res.model, res.refit = builder.build(arch, batches=quick)
            res.accuracy = float(cosine_similarity(ref_val, _outputs(res.model, val_b)).mean())
            res.params = sum(p.numel() for p in res.model.parameters())
            res.size_mb = res.params * 4 / 1e6
            res.violations = violations(constraints, pred, res.size_mb, res.params, res.accuracy)
        results.append(res)
        seen[arch] = res
        trial.set_user_attr("constraint", [1.0 if res.violations else -1.0])
        if progress is not None and res.accuracy is not None:
            progress(ProgressEvent(task="nas: scored sub-networks", completed=sum(r.accuracy is not None
                                                                               for r in results), total=trials))
        if res.model is not None and len([r for r in results if r.model is not None]) > 2 * FINALISTS:
            keep_best_models(results)
        return (res.accuracy or 0.0), pred

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, constraints_func=lambda t: t.user_attrs.get("constraint", [1.0]),
                                         n_startup_trials=min(10, max(trials // 3, 1)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.enqueue_trial({**{f"keep{i}": True for i in range(geo.layers)},  # the full model: the front's anchor
                         **{f"heads{i}": geo.heads for i in range(geo.layers)},
                         **{f"ffn{i}": geo.ffn for i in range(geo.layers)}})
    deadline = None if time_budget_s is None else t0 + time_budget_s
    for _ in range(MAX_DRAWS * trials):
        if sum(r.accuracy is not None for r in results) >= trials or (deadline and time.perf_counter() > deadline):
            break
        study.optimize(objective, n_trials=1)
    feasible = [r for r in results if r.feasible]
    front = pareto(feasible)  # type: ignore[arg-type]
    finalists = pick_finalists(feasible, constraints.max_latency_ms)
    for r in finalists:  # the full refit, then the validation score again
        r.model, r.refit = builder.build(r.arch)
        r.accuracy = float(cosine_similarity(ref_val, _outputs(r.model, val_b)).mean())
    base_info, notes = measure_finalists(finalists, builder.original, "torch", constraints, timing_feeds,
                                         threads)
    for r in finalists:
        r.test_accuracy = float(cosine_similarity(ref_test, _outputs(r.model, test_b)).mean())  # type: ignore
    base_info["test_accuracy"] = 1.0  # the original against itself
    return outcome(results, front, finalists, constraints, table, base_info, notes, t0, metric="cosine")


def keep_best_models(results: list[SubnetTrial]) -> None:
    """Only the best few candidates keep their weights in memory (each is a copy of the model)."""
    built = sorted([r for r in results if r.model is not None and r.feasible],
                   key=lambda r: (-(r.accuracy or 0.0), r.predicted_ms))
    keep = {id(r) for r in built[:2 * FINALISTS]}
    for r in results:
        if r.model is not None and id(r) not in keep:
            r.model = None
