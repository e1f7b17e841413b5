"""Search the ``subnet`` space of a convolutional net (``nas.cnn``): Optuna's multi-objective TPE over the channels
each stage keeps (quality up, predicted latency down), the budgets as Optuna constraints; candidates predicted over a
budget are not cut. Each candidate is cut and refitted on the fit split (BatchNorm statistics, least squares) and
scored on a validation split: top-1 accuracy where the data has labels, else cosine to the original's outputs. The
best finalists are then timed whole beside the original and scored on a test split the search never saw."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from slimforge.core.context import ProgressEvent, ProgressFn
from slimforge.errors import ConfigError, MissingDependencyError
from slimforge.evaluation.metrics import cosine_similarity
from slimforge.nas.cnn import FRACTIONS, CnnArch, CnnBuilder, CnnLatency, cnn_geometry
from slimforge.nas.search import (Constraints, SearchOutcome, measure_finalists, outcome, pareto, pick_finalists,
                                  violations)
from slimforge.nas.subnet_search import FIT_BATCH, MAX_DRAWS, SubnetTrial, keep_best_models

Batches = list[tuple[torch.Tensor, ...]]
MIN_EXAMPLES = 32  # a fifth each to score and to test, the rest to refit


def _logits(model: nn.Module, batches: Batches) -> np.ndarray:
    with torch.inference_mode():
        outs = []
        for b in batches:
            o = model(*b)
            o = o if isinstance(o, torch.Tensor) else o[0]
            outs.append(o.float().reshape(len(o), -1).numpy())
    return np.concatenate(outs)


def search_cnn(model: nn.Module, inputs: list[torch.Tensor], labels: torch.Tensor | None, input_names: list[str], *,
               constraints: Constraints, trials: int = 30, time_budget_s: float | None = None,
               threads: int | None = None, seed: int = 0, fit_samples: int = 512, score_samples: int = 128,
               progress: ProgressFn | None = None) -> SearchOutcome:
    """Search channel widths of ``model`` on its ``inputs`` (tensors in input order, one row per example);
    ``labels``, when given, make the score top-1 accuracy."""
    try:
        import optuna
    except ImportError as exc:
        raise MissingDependencyError("optuna", extra="nas") from exc
    t0 = time.perf_counter()
    n = len(inputs[0])
    if n < MIN_EXAMPLES:
        raise ConfigError(f"the subnet search needs at least {MIN_EXAMPLES} examples to fit, score and test; "
                          f"the data has {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_part = max(n // 5, MIN_EXAMPLES // 4)
    test, val, fit = order[:n_part], order[n_part:2 * n_part], order[2 * n_part:][:fit_samples]

    def batches(idx: np.ndarray) -> Batches:
        return [tuple(t[idx[i:i + FIT_BATCH]] for t in inputs) for i in range(0, len(idx), FIT_BATCH)]

    fit_b, val_b, test_b = batches(fit), batches(val), batches(test)
    geo = cnn_geometry(model, fit_b[0])
    builder = CnnBuilder(model, geo, fit_b)
    quick = fit_b[:max(1, score_samples // FIT_BATCH)]
    ref = {"val": _logits(builder.original, val_b), "test": _logits(builder.original, test_b)}
    truth = None if labels is None else {"val": labels[val].numpy(), "test": labels[test].numpy()}

    def score(m: nn.Module, split: str) -> float:
        out = _logits(m, val_b if split == "val" else test_b)
        if truth is not None:
            return float((out.argmax(1) == truth[split]).mean())
        return float(cosine_similarity(ref[split], out).mean())

    timing_idx = np.resize(order, constraints.batch)  # a batch of the budget's size (repeated rows if need be)
    timing_feeds = {name: t[timing_idx].numpy() for name, t in zip(input_names, inputs)}
    table = CnnLatency(builder, timing_feeds, threads=threads)
    results: list[SubnetTrial] = []
    seen: dict[CnnArch, SubnetTrial] = {}

    def objective(trial: Any) -> tuple[float, float]:
        arch = CnnArch(tuple(trial.suggest_categorical(f"w{i}", geo.choices(i)) for i in range(len(geo.stages))))
        if arch in seen:
            old = seen[arch]
            trial.set_user_attr("constraint", [1.0 if old.violations else -1.0])
            return (old.accuracy or 0.0), old.predicted_ms
        pred = table.predict(arch)
        res = SubnetTrial(trial.number, arch, 0, 0.0, pred)  # type: ignore[arg-type]
        res.violations = violations(constraints, pred, 0.0, 0, None)
        if not res.violations:  # cut and refitted on a few batches to rank; finalists get the whole fit split
            res.model, res.refit = builder.build(arch, batches=quick)
            res.params = sum(p.numel() for p in res.model.parameters())
            res.size_mb = res.params * 4 / 1e6
            res.accuracy = score(res.model, "val")
            res.violations = violations(constraints, pred, res.size_mb, res.params, res.accuracy)
        results.append(res)
        seen[arch] = res
        trial.set_user_attr("constraint", [1.0 if res.violations else -1.0])
        if progress is not None and res.accuracy is not None:
            progress(ProgressEvent(task="nas: scored sub-networks", completed=sum(r.accuracy is not None
                                                                               for r in results), total=trials))
        keep_best_models(results)
        return (res.accuracy or 0.0), pred

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, constraints_func=lambda t: t.user_attrs.get("constraint", [1.0]),
                                         n_startup_trials=min(10, max(trials // 3, 1)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.enqueue_trial({f"w{i}": c for i, c in enumerate(geo.channels)})  # the full model: the front's anchor
    for f in sorted(FRACTIONS[:-1], reverse=True):  # uniform cuts (what a person sets by hand) seed the search too;
        # those predicted over the budget cost a prediction only
        study.enqueue_trial({f"w{i}": min(geo.choices(i), key=lambda c, i=i: abs(c - geo.channels[i] * f))
                             for i in range(len(geo.stages))})
    deadline = None if time_budget_s is None else t0 + time_budget_s
    for _ in range(MAX_DRAWS * trials):
        if sum(r.accuracy is not None for r in results) >= trials or (deadline and time.perf_counter() > deadline):
            break
        study.optimize(objective, n_trials=1)
    feasible = [r for r in results if r.feasible]
    front = pareto(feasible)  # type: ignore[arg-type]
    finalists = pick_finalists(feasible, constraints.max_latency_ms)
    for r in finalists:  # the refit on the whole fit split, then the validation score again
        r.model, r.refit = builder.build(r.arch)  # type: ignore[arg-type]
        r.accuracy = score(r.model, "val")
    base_info, notes = measure_finalists(finalists, builder.original, "torch", constraints, timing_feeds, threads)
    for r in finalists:
        r.test_accuracy = score(r.model, "test")  # type: ignore[arg-type]
    base_info["test_accuracy"] = score(builder.original, "test")
    return outcome(results, front, finalists, constraints, table, base_info, notes, t0,
                   metric="accuracy" if truth is not None else "cosine")
