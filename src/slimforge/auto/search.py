"""The planner: search the candidates the proposers offer for a model on a target, under goals and a time budget.

propose (``auto.candidates``) -> build and evaluate (``auto.evaluate``, through the engine and its step cache) ->
select (``auto.select``: the runoff, the no-slowdown rule, Pareto, the choice, the ablation). Cheap candidates go
first; a more aggressive variant of a candidate that already missed the quality goal is skipped, as is anything the
time budget no longer allows. The winner is verified against the original model on every output.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimforge.auto import select
from slimforge.auto.candidates import SearchSpace, propose
from slimforge.auto.evaluate import QUALITY_GOALS, Evaluated, Evaluator, quality
from slimforge.auto.goals import GoalResult, Goals, assess
from slimforge.auto.targets import Target, detect_machine, feasible, get_target
from slimforge.bench import BenchSpec
from slimforge.core.artifact import Artifact, Check, Format
from slimforge.core.context import ProgressFn, RunContext
from slimforge.errors import ConfigError, NothingQuantized, SlimforgeError
from slimforge.io.inputs import SyntheticData, feeds_for, split_data
from slimforge.plan.cache import MeasureCache, StepCache, cache_root, data_fingerprint

# each candidate alone: a quick estimate (3 rounds); the runoff times the leaders side by side more carefully
FAST_SPEC = BenchSpec(warmup=2, repeats=10, min_time_s=0.3, max_time_s=6.0, rounds=3, max_rounds=3, rel_ci=0.05)


@dataclass
class SearchResult:
    artifact: Artifact  # the best artifact (or the original, normalised, when nothing helps)
    baseline: Artifact
    target: Target
    goals: Goals
    goal_batch: int
    baseline_measurement: dict[str, Any]
    evaluated: list[Evaluated]
    best: Evaluated | None
    goal_results: list[GoalResult]
    notes: list[str]
    verification: Check | None
    seconds: float
    machine: dict[str, Any]
    timing_note: str = ""
    noisy: bool = False
    steps_built: int = 0
    steps_cached: int = 0
    engine_profiles: list[dict[str, Any]] = field(default_factory=list)  # GPU engine: batch ranges, what runs each

    @property
    def goals_met(self) -> bool:
        """Every goal met by what is handed back (the winner, or the original when nothing helps)."""
        return all(g.met for g in self.goal_results)


def search(model: Artifact, *, target: str | Path | Target = "cpu", goals: Goals | None = None, data: Any = None,
           time_budget_s: float = 900.0, eval_limit: int = 256, spec: BenchSpec = FAST_SPEC,
           progress: ProgressFn | None = None, use_cache: bool = True) -> SearchResult:
    """Search for the best artifact; see the module docstring. ``data`` is a slimforge Dataset or None."""
    t0 = time.perf_counter()
    machine = detect_machine()
    tgt, notes = feasible(get_target(target), machine)
    tgt = _gpu_format(model, tgt, notes)
    user_quality = any(k in (goals or Goals()).to_dict() for k in QUALITY_GOALS)
    # a quality goal of the user's replaces the target's default ones (a cosine goal is not also judged as top-1)
    goals = (goals or Goals()).merged({k: v for k, v in tgt.goals.items() if not (user_quality and k in QUALITY_GOALS)})
    ev, train_ds = _evaluator(model, tgt, goals, data, eval_limit, spec, progress, use_cache, notes)
    base_rt = "torch" if model.format is Format.TORCH else _default_runtime(model)
    ev.ctx.report_progress("baseline", 0, 1)
    base_doc = ev.baseline(base_rt, labelled=data is not None)
    ev.ctx.report_progress("baseline", 1, 1)
    goals = _task_goals(ev, goals, user_quality, notes)
    space = _space(model, tgt, goals, ev, data, train_ds, notes)
    evaluated = _evaluate_all(propose(space), ev, data, space.train_seconds, deadline=t0 + time_budget_s)
    timing_note, noisy = select.runoff([e for e in evaluated if e.status == "accepted"], ev, base_rt,
                                       spec=select.runoff_spec(time_budget_s))
    select.apply_no_slowdown(evaluated)
    select.require_gain(evaluated, base_doc.get("size_mb"))
    select.mark_pareto(evaluated, ev.goal_batch, ev.labels is not None)
    best = _finish_choice(evaluated, ev)
    verification = ev.verify(best.artifact, best.candidate.runtime) if best and best.artifact else None
    if best is not None and best.artifact is not None and tgt.device == "cpu":
        best.artifact = _tuned_threads(best, ev, tgt, notes)
    if best is not None and best.artifact is not None and best.peak_memory_mb is None:  # baseline vs chosen
        ev.ctx.report_progress("peak memory, baseline and chosen", 0, 2)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:  # two fresh processes at once: each measures only itself
            base_mem = pool.submit(ev.memory, model, base_rt) if base_doc.get("peak_memory_mb") is None else None
            best_mem = pool.submit(ev.memory, best.artifact, best.candidate.runtime)
            if base_mem is not None:
                base_doc["peak_memory_mb"] = base_mem.result()
            best.peak_memory_mb = best_mem.result()
        ev.ctx.report_progress("peak memory, baseline and chosen", 2, 2)
    goal_results = best.goals if best is not None else assess(goals, base_doc, base_doc, ev.goal_batch)
    if not any(e.latency for e in evaluated):  # nothing was measured: no goal can be said to be met
        goal_results = [dataclasses.replace(g, value=None) for g in goal_results]
        notes.append(f"no candidate could be measured on target {tgt.name} ({len(evaluated)} proposed, "
                     f"{sum(e.status == 'failed' for e in evaluated)} failed); the goals are not met")
    fallback = model if best is None else best.artifact
    if best is None:
        fallback = _no_gain(model, ev, notes)
    return SearchResult(artifact=fallback, baseline=model, target=tgt, goals=goals, goal_batch=ev.goal_batch,
                        baseline_measurement=ev.base_doc, evaluated=evaluated, best=best, goal_results=goal_results,
                        notes=notes, verification=verification, seconds=time.perf_counter() - t0,
                        machine=machine.to_dict(), timing_note=timing_note, noisy=noisy, steps_built=ev.cache.built,
                        steps_cached=ev.cache.hits)


def _tuned_threads(best: Evaluated, ev: Evaluator, tgt: Target, notes: list[str]) -> Artifact:
    """The winner with the thread count it runs fastest with at the target's batch sizes (``bench.threads``: another
    count than one per core only where measurably faster and nowhere slower); the evidence in its metadata."""
    from slimforge.bench.threads import TUNABLE, measure_threads, with_threads

    if best.candidate.runtime not in TUNABLE or tgt.threads == 1:
        return best.artifact
    ev.ctx.report_progress("thread count", 0, 1)
    try:
        choice = measure_threads(best.artifact, best.candidate.runtime, {b: ev.feeds(b) for b in ev.batch_sizes},
                                 max_threads=tgt.threads)
    except Exception as exc:  # noqa: BLE001 - an optional refinement never costs the user the result
        notes.append(f"the thread count could not be tuned ({type(exc).__name__}: "
                     f"{(str(exc).splitlines() or [''])[0][:200]}); the runtime's default is used")
        return best.artifact
    ev.ctx.report_progress("thread count", 1, 1)
    if choice.threads is not None:
        notes.append(f"the chosen model {choice.describe()}; its file records it, and slimforge serve and "
                     "open_session use it (the latencies above were measured with the default)")
    return with_threads(best.artifact, choice)


def _task_goals(ev: Evaluator, goals: Goals, user_quality: bool, notes: list[str]) -> Goals:
    """Quality is judged for the task (detected from the outputs unless given): its primary metric against the
    original's outputs; without a quality goal from the user, the task's default tolerance replaces the target's."""
    from slimforge.evaluation.tasks import DEFAULT_DROP, PRIMARY

    task, metric = ev.task, PRIMARY.get(ev.task)
    if metric is None:
        return goals
    if not user_quality and task in DEFAULT_DROP:
        goals = Goals.from_mapping({**goals.to_dict(), "max_accuracy_drop": DEFAULT_DROP[task]})
        ev.goals = goals
        ev.quality_goals = Goals(**{k: v for k, v in goals.to_dict().items() if k in QUALITY_GOALS})
        ev.base_doc["quality"] = quality(ev.ref_outs, ev.ref_outs, ev.labels, task)
    notes.append(f"task: {task} ({'given' if ev.model.meta.get('task') not in (None, 'generic') else 'detected from the outputs'}); "
                 f"quality is {metric.replace('_', ' ')} with the original's outputs on the same inputs"
                 + (f", default tolerance {DEFAULT_DROP[task]}" if not user_quality and task in DEFAULT_DROP else "")
                 + "; cosine is reported beside it")
    return goals


def _gpu_format(model: Artifact, tgt: Target, notes: list[str]) -> Target:
    """The gpu target's techniques work on PyTorch modules; an ONNX model runs there only through ONNX Runtime's CUDA
    execution provider."""
    if tgt.device != "cuda" or model.format is Format.TORCH:
        return tgt
    from slimforge.runtimes import get_runtime

    if model.format is Format.ONNX and "cuda" in get_runtime("onnxruntime").devices():
        notes.append("gpu target, ONNX model: candidates run on ONNX Runtime's CUDA execution provider")
        return dataclasses.replace(tgt, runtimes=("onnxruntime",), precisions=("fp32", "fp16"))
    raise ConfigError(f"{model.name}: the gpu target optimises PyTorch models (fp16/bf16/FP8, torch.compile, CUDA "
                      f"graphs), and this is a {model.format.value} model; pass the PyTorch model (an nn.Module, a "
                      ".pt2, or --arch with --weights)" + (", or install onnxruntime-gpu for ONNX Runtime's CUDA "
                                                           "execution provider" if model.format is Format.ONNX
                                                           else ""))


def _default_runtime(model: Artifact) -> str:
    from slimforge.runtimes import default_runtime

    return default_runtime(model)


def _evaluator(model: Artifact, tgt: Target, goals: Goals, data: Any, eval_limit: int, spec: BenchSpec,
               progress: ProgressFn | None, use_cache: bool, notes: list[str]) -> tuple[Evaluator, Any]:
    """The evaluation data (held out from calibration and training), the run context and the caches."""
    goal_batch = goals.batch or tgt.batch_sizes[0]
    batch_sizes = tuple(sorted(set(tgt.batch_sizes) | {goal_batch}))
    if data is not None:
        pre = getattr(data, "pre", None)
        if isinstance(pre, dict) and pre.get("kind") == "image":
            from slimforge.io.preprocess import describe

            notes.append(f"images preprocessed as: {describe(pre)}; the baseline and every candidate get the same "
                         "arrays")
        train_ds, eval_ds = split_data(data, eval_limit)
        if train_ds is not data:
            notes.append(f"data split: {len(train_ds)} examples for calibration and training, the last "
                         f"{len(eval_ds)} held out for evaluation")
    else:
        notes.append("no data given: calibration and fidelity use inputs synthesised from the input names, dtypes "
                     "and shapes; training is not tried")
        eval_ds = SyntheticData(model)
        train_ds = SyntheticData(model, n=64, seed=1)  # calibration only: a different draw from the evaluation set
    root = cache_root() if use_cache else None
    ctx = RunContext(progress=progress, threads=tgt.threads, calibration_data=train_ds, baseline=model)
    ev = Evaluator(model, ctx=ctx, cache=StepCache(root), measures=MeasureCache(root), eval_ds=eval_ds,
                   eval_limit=eval_limit, feeds=feeds_for(model, data), batch_sizes=batch_sizes, spec=spec,
                   threads=tgt.threads, goals=goals, goal_batch=goal_batch, data_key=data_fingerprint(data),
                   target_key=f"threads={tgt.threads};calibration={data_fingerprint(train_ds)};device={tgt.device}",
                   device=tgt.device)
    return ev, train_ds


def _space(model: Artifact, tgt: Target, goals: Goals, ev: Evaluator, data: Any, train_ds: Any,
           notes: list[str]) -> SearchSpace:
    """What the proposers see: an estimate of a training epoch, the quality budget, facts about an ONNX model."""
    train_s = None
    if model.format is Format.TORCH and data is not None:
        largest = max(ev.batch_sizes)
        per_example_ms = ev.base_doc["latency"][largest]["p50"] / largest
        train_s = min(len(train_ds), 4096) * 0.8 * per_example_ms * 6 / 1000.0  # forward + backward + teacher
    budget_q = None
    drop = goals.max_accuracy_drop
    if drop is not None and ev.labels is None:
        budget_q = float(drop) if not isinstance(drop, str) else float(drop[:-1]) / 100.0
    elif goals.min_cosine is not None:
        budget_q = 1.0 - goals.min_cosine
    extra: dict[str, Any] = {}
    if model.format is Format.ONNX and model.path is not None:
        from slimforge.convert.info import onnx_info, sensitive_nodes

        info = onnx_info(model.path)
        extra = {"family": info["family"], "sensitive_nodes": sensitive_nodes(model.path),
                 "output_tail": sensitive_nodes(model.path, depth=0, tensors=True)}
        notes.append(f"model family (guessed from its ops): {info['family']}; opset {info['opset'].get('ai.onnx')}, "
                     f"producer '{info['producer'] or '?'}', weights "
                     f"{'in initializers' if info['weights_are_initializers'] else 'computed by nodes: normalised'}")
    return SearchSpace(art=model, target=tgt, train_seconds=train_s, quality_budget=budget_q, extra=extra)


def _skip_reason(ev: Evaluated, by_name: dict[str, Evaluated], has_data: bool, left: float,
                 train_s: float | None) -> str:
    """Why a candidate need not be built now ("" when it should be)."""
    cand = ev.candidate
    parent = by_name.get(cand.after or "")
    if parent is not None and parent.status == "rejected" and any(
            not g.met for g in parent.goals if g.name.startswith(("accuracy", "cosine"))):
        return f"dominated: the milder '{parent.candidate.name}' already misses the quality goal"
    cheaper = by_name.get(cand.unless or "")
    if cheaper is not None and cheaper.status == "accepted":
        return f"not needed: '{cheaper.candidate.name}' already meets the quality goals"
    if cand.trains and not has_data:
        return "trains: needs training data (--data)"
    if left <= 0 or (cand.trains and train_s is not None and train_s * 15 > left):
        return f"time budget: {max(left, 0):.0f} s left"
    return ""


def _evaluate_all(candidates: list[Any], ev: Evaluator, data: Any, train_s: float | None,
                  deadline: float) -> list[Evaluated]:
    """Build, measure and judge each candidate in order of cost; quality first, then the no-slowdown rule."""
    evaluated: list[Evaluated] = []
    by_name: dict[str, Evaluated] = {}
    for i, cand in enumerate(candidates):
        e = Evaluated(cand)
        evaluated.append(e)
        by_name[cand.name] = e
        ev.ctx.report_progress("search", i, len(candidates))
        skip = _skip_reason(e, by_name, data is not None, deadline - time.perf_counter(), train_s)
        if skip:
            e.status, e.reason = "skipped", skip
            continue
        t = time.perf_counter()
        try:
            missed = ev.run(e)
        except NothingQuantized as exc:  # the FP32 model unchanged: rejected for that, never judged on speed
            e.status, e.reason = "rejected", str(exc)
            e.seconds = time.perf_counter() - t
            continue
        except select.BUILD_ERRORS as exc:
            e.status, e.reason = "failed", select.failure(exc)
            e.seconds = time.perf_counter() - t
            continue
        e.seconds = time.perf_counter() - t
        if missed:
            e.status, e.reason = "rejected", "; ".join(g.describe() for g in missed)
            hint = ev.divergence_hint(e.artifact) if e.artifact is not None else ""
            e.reason += f"; {hint}" if hint else ""
        else:
            e.status = "accepted"
            select.apply_no_slowdown([e])  # clearly slower, timed alone: out now (so 'unless' skips stay right)
    ev.ctx.report_progress("search", len(candidates), len(candidates))
    return evaluated


def _finish_choice(evaluated: list[Evaluated], ev: Evaluator) -> Evaluated | None:
    best = select.choose(evaluated)
    if best is None:
        return None
    best = select.ablate(best, evaluated, ev, ev.run)
    best.status = "chosen"
    for e in evaluated:
        if e.status == "accepted":
            e.reason = select.lost_to(e, best)
        elif e.status == "rejected" and e.pareto and not e.reason:
            e.reason = "on the Pareto front but misses a goal"
    return best


def _no_gain(model: Artifact, ev: Evaluator, notes: list[str]) -> Artifact:
    """The original model (ONNX: normalised; on a GPU target: placed on the GPU in IEEE FP32, so it is written as
    an engine file that serves there)."""
    gpu = ev.device == "cuda" and model.format is Format.TORCH
    notes.append("no gain on this target: no candidate met the quality goals and beat the baseline; the original "
                 "model is handed back" + (", normalised" if model.format is Format.ONNX else "")
                 + (", in FP32 on the GPU" if gpu else ""))
    if model.format is not Format.ONNX and not gpu:
        return model
    from slimforge.convert.normalize import NormalizeConfig
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe
    from slimforge.techniques.gpu import GpuConfig

    step = GpuConfig(dtype="fp32", min_cosine=0.0) if gpu else NormalizeConfig()
    try:
        recipe = Recipe(steps=(step,), runtime="torch") if gpu else Recipe(steps=(step,))
        return run_steps(model, recipe, ev.ctx, cache=ev.cache, target=ev.target_key)
    except (SlimforgeError, RuntimeError, ValueError, OSError):
        return model
