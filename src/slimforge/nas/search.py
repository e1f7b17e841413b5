"""Architecture search under measured constraints, ``mobilenet_v3`` space: Optuna's multi-objective TPE (accuracy up,
predicted latency down) with the constraints as Optuna constraints; candidates predicted over budget are not trained.
Each trained candidate gets the shared trainer on the training split and is scored on a validation split cut from it;
the Pareto front's finalists are then timed whole, beside the baseline, to check the predictor and to choose; the
chosen model's accuracy is measured on the held-out split that the search never saw."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimforge.core.context import ProgressEvent, ProgressFn
from slimforge.errors import ConfigError, MissingDependencyError
from slimforge.nas.latency import LatencyTable, predictor_error
from slimforge.nas.space import MbArch, build_model, sample

log = logging.getLogger(__name__)
FINALISTS = 3
MAX_DRAWS = 25  # architectures drawn per trained one, at most
MARGIN = 0.05  # predicted latency must be this far under the budget (the predictor erred by 2-4% on digits)


@dataclass(frozen=True)
class Constraints:
    """Budgets, each measured on the target runtime and threads at ``batch``; None: not constrained."""

    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_params: int | None = None
    min_accuracy: float | None = None
    batch: int = 64
    min_cosine: float | None = None  # the subnet space: least cosine to the original's outputs


@dataclass
class TrialResult:
    number: int
    arch: MbArch
    params: int
    size_mb: float
    predicted_ms: float
    accuracy: float | None = None  # on the validation split; None: not trained (predicted over a budget)
    violations: list[str] = field(default_factory=list)
    measured_ms: float | None = None
    test_accuracy: float | None = None
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def feasible(self) -> bool:
        return not self.violations and self.accuracy is not None

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.number, "arch": self.arch.describe(), "arch_spec": self.arch.to_dict(),
                "params": self.params, "size_mb": round(self.size_mb, 4), "predicted_ms": round(self.predicted_ms, 4),
                "val_accuracy": self.accuracy, "violations": self.violations, "measured_ms": self.measured_ms,
                "test_accuracy": self.test_accuracy}


@dataclass
class SearchOutcome:
    trials: list[TrialResult]
    front: list[TrialResult]
    chosen: TrialResult | None
    table: dict[str, Any]
    predictor: dict[str, Any]
    baseline: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)
    metric: str = "accuracy"  # what a trial's accuracy is: top-1 "accuracy", or "cosine" to the original's outputs


def shifted(x: torch.Tensor, most: int = 1) -> torch.Tensor:
    """Images moved by up to ``most`` pixels each way (zero-filled): the augmentation every trial trains with.

    Example:
        >>> shifted(torch.ones(4, 1, 8, 8)).shape
        torch.Size([4, 1, 8, 8])
    """
    h, w = x.shape[-2:]
    dy, dx = (int(v) for v in torch.randint(-most, most + 1, (2,)))
    padded = nn.functional.pad(x, (most, most, most, most))
    return padded[..., most + dy:most + dy + h, most + dx:most + dx + w]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((pred == y).float().mean())


def violations(c: Constraints, predicted_ms: float, size_mb: float, params: int, quality: float | None
               ) -> list[str]:
    """The budgets a candidate misses; ``quality`` is validation accuracy (mobilenet_v3) or cosine (subnet), None
    before it is known."""
    out = []
    if c.max_latency_ms is not None and predicted_ms > c.max_latency_ms * (1 - MARGIN):
        out.append(f"latency {predicted_ms:.3g} > {c.max_latency_ms:.3g} ms less the predictor's margin")
    if c.max_size_mb is not None and size_mb > c.max_size_mb:
        out.append(f"size {size_mb:.3g} > {c.max_size_mb:.3g} MB")
    if c.max_params is not None and params > c.max_params:
        out.append(f"params {params} > {c.max_params}")
    if c.min_accuracy is not None and quality is not None and quality < c.min_accuracy:
        out.append(f"accuracy {quality:.4f} < {c.min_accuracy:.4f}")
    if c.min_cosine is not None and quality is not None and quality < c.min_cosine:
        out.append(f"cosine {quality:.4f} < {c.min_cosine:.4f}")
    return out


def search_mobilenet(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                     constraints: Constraints, trials: int = 30, time_budget_s: float | None = None,
                     epochs: int = 15, threads: int | None = None, seed: int = 0,
                     baseline: nn.Module | None = None, progress: ProgressFn | None = None) -> SearchOutcome:
    """Search the ``mobilenet_v3`` space on image arrays ``[N, C, H, W]`` with integer labels."""
    try:
        import optuna
    except ImportError as exc:
        raise MissingDependencyError("optuna", extra="nas") from exc
    from torch.utils.data import TensorDataset

    from slimforge.train.trainer import TrainConfig, train

    if x_train.ndim != 4:
        raise ConfigError(f"the mobilenet_v3 space takes images [N, C, H, W]; the data's inputs are {x_train.shape}")
    t0 = time.perf_counter()
    classes = int(max(y_train.max(), y_test.max())) + 1
    in_ch, hw = int(x_train.shape[1]), (int(x_train.shape[2]), int(x_train.shape[3]))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_train))
    n_val = max(len(x_train) // 4, classes)
    val, tr = order[:n_val], order[n_val:]
    xt, yt = torch.from_numpy(x_train[tr]).float(), torch.from_numpy(y_train[tr]).long()
    xv, yv = torch.from_numpy(x_train[val]).float(), torch.from_numpy(y_train[val]).long()
    table = LatencyTable(classes=classes, batch=constraints.batch, threads=threads)
    results: list[TrialResult] = []
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, weight_decay=1e-4, seed=seed, device="cpu")

    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(m(shifted(b[0])), b[1], label_smoothing=0.05)

    seen: dict[MbArch, TrialResult] = {}

    def objective(trial: Any) -> tuple[float, float]:
        arch = sample(trial)
        if arch in seen:  # the sampler proposed it again: its score stands (it is not trained twice)
            old = seen[arch]
            trial.set_user_attr("constraint", [1.0 if old.violations else -1.0])
            return (old.accuracy or 0.0), old.predicted_ms
        torch.manual_seed(seed)
        model = build_model(arch, in_ch, hw, classes)
        params = sum(p.numel() for p in model.parameters())
        pred = table.predict(arch, in_ch, hw)
        res = TrialResult(trial.number, arch, params, params * 4 / 1e6, pred)
        res.violations = violations(constraints, pred, res.size_mb, params, None)
        if not res.violations:  # worth training
            train(model, loss, TensorDataset(xt, yt), cfg, eval_fn=lambda m: _accuracy(m, xv, yv), task="nas trial")
            res.accuracy, res.model = _accuracy(model, xv, yv), model
            res.violations = violations(constraints, pred, res.size_mb, params, res.accuracy)
        results.append(res)
        seen[arch] = res
        trial.set_user_attr("constraint", [1.0 if res.violations else -1.0])
        if progress is not None and res.accuracy is not None:
            progress(ProgressEvent(task="nas: trained candidates", completed=sum(r.accuracy is not None
                                                                             for r in results), total=trials))
        return (res.accuracy or 0.0), pred

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, constraints_func=lambda t: t.user_attrs.get("constraint", [1.0]),
                                         n_startup_trials=min(10, max(trials // 3, 1)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    # ``trials`` counts trained candidates: one predicted over a budget costs a table lookup, not a training
    deadline = None if time_budget_s is None else t0 + time_budget_s
    for _ in range(MAX_DRAWS * trials):
        if sum(r.accuracy is not None for r in results) >= trials or (deadline and time.perf_counter() > deadline):
            break
        study.optimize(objective, n_trials=1)
    front = pareto([r for r in results if r.feasible])
    # the best of all that met the budgets (a small validation split ties many), not only the front's few points
    finalists = pick_finalists([r for r in results if r.feasible], constraints.max_latency_ms)
    full = TensorDataset(torch.cat([xt, xv]), torch.cat([yt, yv]))
    for r in finalists:  # trained again on the whole training split (validation included), twice as long
        torch.manual_seed(seed)
        r.model = build_model(r.arch, in_ch, hw, classes)
        train(r.model, loss, full, dataclasses.replace(cfg, epochs=2 * epochs), task="nas: final training")
    base_info, notes = measure_finalists(finalists, baseline, table.runtime, constraints,
                                          image_feeds(constraints.batch, in_ch, hw), threads)
    xs, ys = torch.from_numpy(x_test).float(), torch.from_numpy(y_test).long()
    for r in finalists:
        r.test_accuracy = _accuracy(r.model, xs, ys)  # type: ignore[arg-type]
    if baseline is not None:
        base_info["test_accuracy"] = _accuracy(baseline, xs, ys)
    return outcome(results, front, finalists, constraints, table, base_info, notes, t0)


def outcome(results: list[Any], front: list[Any], finalists: list[Any], constraints: Constraints, table: Any,
            baseline: dict[str, Any], notes: list[str], t0: float, metric: str = "accuracy") -> SearchOutcome:
    """The search's result from its measured finalists: the most accurate one measured within the latency budget
    (a note when none was), and the predictor's error on them. Every search space ends here."""
    budget = constraints.max_latency_ms
    ok = [r for r in finalists if budget is None or (r.measured_ms or 0) <= budget]
    if finalists and not ok:
        notes.append("every finalist was predicted within the latency budget but measured over it")
    chosen = max(ok, key=lambda r: (r.accuracy or 0.0, -(r.measured_ms or 0.0))) if ok else None
    predicted = {str(r.number): r.predicted_ms for r in finalists}
    measured = {str(r.number): r.measured_ms for r in finalists if r.measured_ms}
    return SearchOutcome(trials=results, front=front, chosen=chosen, table=table.to_dict(),
                         predictor={**predictor_error(predicted, measured), "layers_timed": table.measured},
                         baseline=baseline, seconds=time.perf_counter() - t0, notes=notes, metric=metric)


def pareto(rows: list[TrialResult]) -> list[TrialResult]:
    """The trials no other trial beats on both validation accuracy (higher) and predicted latency (lower)."""
    return sorted([r for r in rows if not any(
        (o.accuracy or 0) >= (r.accuracy or 0) and o.predicted_ms <= r.predicted_ms and
        ((o.accuracy or 0) > (r.accuracy or 0) or o.predicted_ms < r.predicted_ms) for o in rows)],
        key=lambda r: r.predicted_ms)


def image_feeds(batch: int, in_ch: int, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    return {"x": torch.randn(batch, in_ch, *hw).numpy()}


def pick_finalists(feasible: list[Any], budget_ms: float | None, n: int = FINALISTS) -> list[Any]:
    """The ``n`` most accurate candidates that met every budget; when a latency budget is set and all of them are
    predicted within 15% of it, the last place goes to the most accurate one predicted with that headroom, so that a
    predictor that is a little optimistic cannot leave no finalist measured under the budget.

    Example:
        >>> from types import SimpleNamespace as T
        >>> c = [T(accuracy=a, predicted_ms=p) for a, p in ((.9, 98), (.89, 97), (.88, 99), (.8, 60))]
        >>> [t.predicted_ms for t in pick_finalists(c, 100.0)]
        [98, 97, 60]
    """
    ranked = sorted(feasible, key=lambda r: (-(r.accuracy or 0.0), r.predicted_ms))
    chosen = ranked[:n]
    if budget_ms is None or len(chosen) < n or any(r.predicted_ms <= 0.85 * budget_ms for r in chosen):
        return chosen
    safe = next((r for r in ranked[n:] if r.predicted_ms <= 0.85 * budget_ms), None)
    return chosen if safe is None else [*chosen[:-1], safe]


def measure_finalists(finalists: list[Any], baseline: nn.Module | None, runtime: str, c: Constraints,
                      feeds: dict[str, np.ndarray], threads: int | None) -> tuple[dict[str, Any], list[str]]:
    """The finalists and the baseline timed whole, interleaved, on ``feeds`` (a batch of the constraint's size)."""
    from slimforge.bench.compare import compare
    from slimforge.bench.timing import BenchSpec
    from slimforge.io.models import load
    from slimforge.runtimes import open_session

    models = {f"trial {r.number}": r.model for r in finalists}
    if baseline is not None:
        models["baseline"] = baseline.eval()
    if not models:
        return {}, ["no trial met the constraints: nothing to time"]
    sessions = {k: open_session(load(m, example_inputs=feeds), runtime, threads=threads)
                for k, m in models.items()}
    try:
        comp = compare(sessions, {c.batch: feeds}, BenchSpec(rounds=5, max_rounds=8, rel_ci=0.05),
                       reference="baseline" if baseline is not None else None)
    finally:
        for s in sessions.values():
            s.close()
    for r in finalists:
        r.measured_ms = comp.timing(f"trial {r.number}", c.batch).p50
    info: dict[str, Any] = {}
    if baseline is not None:
        t = comp.timing("baseline", c.batch)
        info = {"latency_ms": t.p50, "ci_ms": [t.lo, t.hi], "params": sum(p.numel() for p in baseline.parameters()),
                "speedups": {f"trial {r.number}": comp.ratio(f"trial {r.number}", c.batch).to_dict()
                             for r in finalists}}
    return info, [comp.note()] if comp.note() else []
