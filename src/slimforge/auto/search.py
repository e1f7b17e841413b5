"""The planner: search the candidates the registry offers for a model on a target, under goals and a time budget.

Every candidate is built through the step cache (shared prefixes such as the ONNX export are built once, and results
on disk survive across runs), evaluated on the same data against the same reference outputs, and timed with the
same benchmark on its runtime. Cheap candidates go first; a more aggressive variant of a candidate that already
missed the quality goal is skipped, as is anything the time budget no longer allows. A candidate can win only if it
meets the quality goals and is faster than the baseline at every batch size measured (never a slowdown); optional
steps of the winner (graph passes) stay only if they make it faster. The winner is verified against the original
model on every output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.auto.candidates import Candidate, SearchSpace, propose
from slimforge.auto.goals import GoalResult, Goals, assess
from slimforge.auto.targets import Target, detect_machine, feasible, get_target
from slimforge.bench.timing import BenchSpec, measure
from slimforge.core.artifact import Artifact, Check, Format
from slimforge.core.context import ProgressFn, RunContext
from slimforge.core.registry import apply
from slimforge.errors import SlimforgeError

log = logging.getLogger(__name__)

SEARCH_VERSION = 1
FAST_SPEC = BenchSpec(warmup=2, repeats=10, min_time_s=0.3, max_time_s=6.0)


def cache_root() -> Path:
    """``$SLIMFORGE_CACHE_DIR``, else ``~/.cache/slimforge``."""
    return Path(os.environ.get("SLIMFORGE_CACHE_DIR") or Path.home() / ".cache" / "slimforge")


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def fingerprint(art: Artifact) -> str:
    """What identifies the source model's content: file digests for files, all weights for in-memory modules."""
    if art.source_id.startswith("module:") and art.handle is not None:
        h = hashlib.sha256(type(art.handle).__qualname__.encode())
        for name, t in art.handle.state_dict().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(t.detach().cpu().float().numpy()).tobytes())
        return "module:" + h.hexdigest()[:20]
    return art.source_id


def data_fingerprint(ds: Any) -> str:
    if ds is None:
        return "none"
    path = getattr(ds, "path", None)
    stamp = ""
    if path is not None and Path(path).exists():
        st = Path(path).stat()
        stamp = f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return _sha(getattr(ds, "name", "data"), len(ds), stamp)


class StepCache:
    """Artifacts after each prefix of steps: in memory for this run, on disk (ONNX / OpenVINO files) across runs."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.memory: dict[str, Artifact] = {}
        self.hits = 0
        self.built = 0

    def build(self, base: Artifact, base_key: str, steps: tuple, ctx: RunContext) -> tuple[Artifact, str]:
        art, key = base, base_key
        for i, step in enumerate(steps):
            key = _sha(key, step.to_dict(), SEARCH_VERSION)
            cached = self._get(key)
            if cached is not None:
                art = cached
                self.hits += 1
                continue
            ctx.report_progress(f"build: {step.kind}", i, len(steps))
            art = apply(art, step, ctx)
            self.built += 1
            self._put(key, art)
        return art, key

    def _get(self, key: str) -> Artifact | None:
        if key in self.memory:
            return self.memory[key]
        if self.root is None:
            return None
        folder = self.root / "steps" / key
        for name in ("model.onnx", "model.xml"):
            if (folder / name).is_file() and (folder / "complete").is_file():
                from slimforge.io.models import load

                try:
                    art = load(folder / name)
                except SlimforgeError:
                    return None
                self.memory[key] = art
                return art
        return None

    def _put(self, key: str, art: Artifact) -> None:
        if self.root is not None and art.format in (Format.ONNX, Format.OPENVINO) and art.path is not None:
            from slimforge.io.save import save

            folder = self.root / "steps" / key
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                art = save(art, folder / ("model.onnx" if art.format is Format.ONNX else "model.xml"))
                (folder / "complete").write_text("1")
            except (SlimforgeError, OSError) as exc:  # caching is an optimisation: never fail the search for it
                log.warning("could not cache step %s: %s", key, exc)
        self.memory[key] = art


class _Synthetic:
    """Synthesised inputs when the user gives no data (calibration and fidelity then use them). For recurrent
    models (state inputs with matching state outputs) the batches are consecutive steps: each step's state input is
    the state the model returned at the step before, so calibration sees the states the model really reaches."""

    def __init__(self, art: Artifact, n: int = 64, seed: int = 0, steps: int = 8) -> None:
        from slimforge.io.synth import state_pairs

        self.art, self.n, self.name, self.seed, self.steps = art, n, "synthesized inputs", seed, steps
        self.pairs = state_pairs(art.io)
        self._session: Any = None

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, *, limit: int | None = None):
        from slimforge.io.data import Batch
        from slimforge.io.synth import synthesize

        left, i = min(self.n, limit or self.n), 0
        state: dict[str, np.ndarray] = {}
        while left > 0:
            b = min(batch_size, left)
            feeds = synthesize(self.art.io, batch=b, seq=64, examples=self.art.examples, meta=self.art.meta,
                               seed=self.seed * 1000 + i)
            if self.pairs and i % self.steps:  # carry the state of the previous step (same batch size)
                feeds.update({k: v for k, v in state.items() if v.shape[0] == b})
            if self.pairs:
                if self._session is None:
                    from slimforge.runtimes import open_session

                    self._session = open_session(self.art)
                outs = self._session.run(feeds)
                state = {name: outs[j] for name, j in self.pairs.items()}
            yield Batch(feeds=feeds)
            left -= b
            i += 1


class _Slice:
    """Examples ``[start, stop)`` of a dataset, batched as the dataset batches them (so a split keeps padding rules)."""

    def __init__(self, ds: Any, start: int, stop: int) -> None:
        self.ds, self.start, self.stop = ds, start, stop
        self.name = f"{ds.name}[{start}:{stop}]"
        self.path = getattr(ds, "path", None)

    def __len__(self) -> int:
        return self.stop - self.start

    def batches(self, batch_size: int, *, limit: int | None = None):
        from slimforge.io.data import Batch

        want = min(len(self), limit or len(self))
        seen, given = 0, 0
        for batch in self.ds.batches(batch_size, limit=self.start + want):
            n = len(next(iter(batch.feeds.values())))
            lo, hi = max(self.start - seen, 0), min(self.start + want - seen, n)
            seen += n
            if hi <= lo:
                continue
            given += hi - lo
            yield Batch(feeds={k: v[lo:hi] for k, v in batch.feeds.items()},
                        labels=None if batch.labels is None else batch.labels[lo:hi], items=batch.items[lo:hi])
            if given >= want:
                return


def split_data(ds: Any, eval_limit: int) -> tuple[Any, Any]:
    """(calibration/training part, evaluation part): the last ``eval_limit`` examples (at most a third) are held out
    so that what is trained or calibrated on is never what it is judged on."""
    n = len(ds)
    n_eval = min(eval_limit, n // 3)
    if n_eval < 16:
        return ds, ds
    return _Slice(ds, 0, n - n_eval), _Slice(ds, n - n_eval, n)


@dataclass
class Evaluated:
    """One candidate's measurements and verdict."""

    candidate: Candidate
    status: str = "pending"  # chosen | accepted | rejected | failed | skipped
    reason: str = ""
    latency: dict[int, dict[str, float]] = field(default_factory=dict)
    size_mb: float | None = None
    peak_memory_mb: float | None = None
    quality: dict[str, float] = field(default_factory=dict)
    goals: list[GoalResult] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    pareto: bool = False
    artifact: Artifact | None = None
    key: str = ""

    def measurement(self) -> dict[str, Any]:
        return {"latency": self.latency, "size_mb": self.size_mb, "peak_memory_mb": self.peak_memory_mb,
                "quality": self.quality}

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.to_dict(), "status": self.status, "reason": self.reason,
                "latency_ms": {str(b): v for b, v in self.latency.items()}, "size_mb": self.size_mb,
                "peak_memory_mb": self.peak_memory_mb, "quality": self.quality,
                "goals": [g.to_dict() for g in self.goals], "seconds": self.seconds, "cached": self.cached,
                "pareto": self.pareto}


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
    steps_built: int = 0
    steps_cached: int = 0

    @property
    def goals_met(self) -> bool:
        """Every goal met by what is handed back (the winner, or the original when nothing helps)."""
        return all(g.met for g in self.goal_results)


def _quality(ref: list[np.ndarray], cand: list[np.ndarray], labels: np.ndarray | None, task: str) -> dict[str, float]:
    """The task's metrics, plus the relative output error (L2 of the difference over L2 of the reference, worst
    output): cosine alone hides errors in outputs dominated by a few large values, such as box coordinates."""
    from slimforge.evaluation.run import quality_metrics

    out = {k: float(v.value) for k, v in quality_metrics(task, cand, ref, labels).items()}
    rel = []
    for r, c in zip(ref, cand):
        r64, c64 = np.asarray(r, np.float64), np.asarray(c, np.float64)
        if r64.shape == c64.shape and r64.size and np.linalg.norm(r64) > 0:
            rel.append(float(np.linalg.norm(r64 - c64) / np.linalg.norm(r64)))
    if rel:
        out["rel_error"] = max(rel)
    return out


def search(model: Artifact, *, target: str | Path | Target = "cpu", goals: Goals | None = None, data: Any = None,
           workdir: Path, time_budget_s: float = 900.0, eval_limit: int = 256, spec: BenchSpec = FAST_SPEC,
           progress: ProgressFn | None = None, use_cache: bool = True) -> SearchResult:
    """Search for the best artifact; see the module docstring. ``data`` is a slimforge Dataset or None."""
    from slimforge.evaluation.run import collect_outputs
    from slimforge.api import feeds_for

    t0 = time.perf_counter()
    deadline = t0 + time_budget_s
    machine = detect_machine()
    tgt, notes = feasible(get_target(target), machine)
    goals = (goals or Goals()).merged(tgt.goals)
    goal_batch = goals.batch or tgt.batch_sizes[0]
    batch_sizes = tuple(sorted(set(tgt.batch_sizes) | {goal_batch}))
    task = str(model.meta.get("task") or "generic")
    train_ds, eval_ds = split_data(data, eval_limit) if data is not None else (None, _Synthetic(model))
    if data is not None and train_ds is not data:
        notes.append(f"data split: {len(train_ds)} examples for calibration and training, the last {len(eval_ds)} "
                     "held out for evaluation")
    if data is None:
        notes.append("no data given: calibration and fidelity use inputs synthesised from the input names, dtypes "
                     "and shapes; training is not tried")
        train_ds = _Synthetic(model, n=64, seed=1)  # calibration only: a different draw from the evaluation set
    root = cache_root() if use_cache else None
    cache = StepCache(root)
    base_key = _sha(fingerprint(model), SEARCH_VERSION)
    ctx = RunContext(workdir=workdir / "steps", progress=progress, threads=tgt.threads, calibration_data=train_ds,
                     baseline=model)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    feeds = feeds_for(model, data)
    measure_memory = goals.max_memory_mb is not None
    mkey_common = (tuple(batch_sizes), tgt.threads, data_fingerprint(data), len(eval_ds), spec.repeats, task)

    def measured(art: Artifact, runtime: str, key: str) -> tuple[dict[str, Any], list[np.ndarray], bool]:
        """Latency, size, memory and outputs, from the measurement cache when this exact thing was measured."""
        mfile = root / "measure" / f"{_sha(key, runtime, mkey_common)}.npz" if root else None
        if mfile is not None and mfile.is_file():
            with np.load(mfile, allow_pickle=False) as z:
                doc = json.loads(str(z["doc"]))
                outs = [z[f"out{i}"] for i in range(int(doc["n_out"]))]
            doc["latency"] = {int(b): v for b, v in doc["latency"].items()}
            return doc, outs, True
        outs, _ = collect_outputs(art, eval_ds, runtime=runtime, limit=eval_limit)
        bench = measure(art, runtime, feeds, batch_sizes=batch_sizes, spec=spec, threads=tgt.threads,
                        measure_memory=measure_memory)
        doc = {"latency": {b: {"p50": t.p50, "p95": t.p95, "p99": t.p99} for b, t in bench.latency_ms.items()},
               "size_mb": art.size_bytes() / 1e6,
               "peak_memory_mb": bench.peak_memory_mb if measure_memory else None, "n_out": len(outs)}
        if mfile is not None:
            mfile.parent.mkdir(parents=True, exist_ok=True)
            tmp = mfile.with_suffix(".tmp.npz")
            np.savez(tmp, doc=json.dumps(doc), **{f"out{i}": o for i, o in enumerate(outs)})
            os.replace(tmp, mfile)
        return doc, outs, False

    # the baseline, on its natural runtime
    from slimforge.runtimes import default_runtime

    base_rt = "torch" if model.format is Format.TORCH else default_runtime(model)
    ctx.report_progress("baseline", 0, 1)
    base_doc, ref_outs, _ = measured(model, base_rt, base_key)
    labels = _labels(eval_ds, eval_limit) if data is not None and task != "embedding" else None
    base_doc["quality"] = _quality(ref_outs, ref_outs, labels, task)
    ctx.report_progress("baseline", 1, 1)

    train_s = None
    if model.format is Format.TORCH and data is not None:
        largest = max(batch_sizes)
        per_example_ms = base_doc["latency"][largest]["p50"] / largest
        train_s = min(len(train_ds), 4096) * 0.8 * per_example_ms * 6 / 1000.0  # forward + backward + teacher
    budget_q = None
    if goals.max_accuracy_drop is not None and not isinstance(goals.max_accuracy_drop, str) and labels is None:
        budget_q = float(goals.max_accuracy_drop)
    elif goals.max_accuracy_drop is not None and labels is None:
        budget_q = float(str(goals.max_accuracy_drop)[:-1]) / 100.0
    elif goals.min_cosine is not None:
        budget_q = 1.0 - goals.min_cosine
    extra: dict[str, Any] = {}
    if model.format is Format.ONNX and model.path is not None:
        from slimforge.convert.info import onnx_info, sensitive_nodes

        info = onnx_info(model.path)
        extra = {"family": info["family"], "sensitive_nodes": sensitive_nodes(model.path)}
        notes.append(f"model family (guessed from its ops): {info['family']}; opset {info['opset'].get('ai.onnx')}, "
                     f"producer '{info['producer'] or '?'}', weights "
                     f"{'in initializers' if info['weights_are_initializers'] else 'computed by nodes: normalised'}")
    space = SearchSpace(art=model, target=tgt, machine=machine, has_labels=labels is not None,
                        train_seconds=train_s if data is not None else None,
                        time_left_s=deadline - time.perf_counter(), quality_budget=budget_q, extra=extra)
    candidates = propose(space)
    evaluated: list[Evaluated] = []
    by_name: dict[str, Evaluated] = {}
    quality_goals = Goals(**{k: v for k, v in goals.to_dict().items()
                             if k in ("min_accuracy", "max_accuracy_drop", "min_cosine")})

    def judge(ev: Evaluated) -> list[GoalResult]:
        """Assess every goal; return the quality goals it misses."""
        ev.goals = assess(goals, ev.measurement(), base_doc, goal_batch)
        return [g for g in assess(quality_goals, ev.measurement(), base_doc, goal_batch) if not g.met]

    def run_candidate(ev: Evaluated) -> list[GoalResult]:
        """Build, measure and assess ``ev``; returns the quality goals it misses. Build errors propagate."""
        art, key = cache.build(model, base_key, ev.candidate.steps, ctx)
        doc, outs, ev.cached = measured(art, ev.candidate.runtime, key)
        ev.artifact, ev.key = art, key
        ev.latency, ev.size_mb, ev.peak_memory_mb = doc["latency"], doc["size_mb"], doc.get("peak_memory_mb")
        ev.quality = _quality(ref_outs, outs, labels, task)
        return judge(ev)

    def base_latency(b: int) -> float:
        return base_doc["latency"][b]["p50"]

    for i, cand in enumerate(candidates):
        ev = Evaluated(cand)
        evaluated.append(ev)
        by_name[cand.name] = ev
        ctx.report_progress("search", i, len(candidates))
        left = deadline - time.perf_counter()
        parent = by_name.get(cand.after or "")
        if parent is not None and parent.status == "rejected" and any(not g.met for g in parent.goals
                                                                      if g.name.startswith(("accuracy", "cosine"))):
            ev.status = "skipped"
            ev.reason = f"dominated: the milder '{parent.candidate.name}' already misses the quality goal"
            continue
        cheaper = by_name.get(cand.unless or "")
        if cheaper is not None and cheaper.status == "accepted":
            ev.status = "skipped"
            ev.reason = f"not needed: '{cheaper.candidate.name}' already meets the quality goals"
            continue
        if cand.trains and data is None:
            ev.status, ev.reason = "skipped", "trains: needs training data (--data)"
            continue
        if left <= 0 or (cand.trains and train_s is not None and train_s * 15 > left):
            ev.status, ev.reason = "skipped", f"time budget: {max(left, 0):.0f} s left"
            continue
        t = time.perf_counter()
        try:
            missed_q = run_candidate(ev)
        except _BUILD_ERRORS as exc:
            ev.status, ev.reason = "failed", _failure(exc)
            ev.seconds = time.perf_counter() - t
            continue
        ev.seconds = time.perf_counter() - t
        art = ev.artifact
        slower = _slowdowns(ev, base_latency)
        if missed_q:
            ev.status, ev.reason = "rejected", "; ".join(g.describe() for g in missed_q)
            where = _divergence_hint(model, art, eval_ds)
            if where:
                ev.reason += f"; {where}"
        elif slower:
            ev.status = "rejected"
            ev.reason = f"slower than the baseline at batch {slower}"
        else:
            ev.status = "accepted"
    ctx.report_progress("search", len(candidates), len(candidates))

    _runoff([e for e in evaluated if e.status == "accepted"], base_doc, feeds, batch_sizes, tgt.threads, ctx,
            baseline=(model, base_rt))
    _recheck_no_slowdown(evaluated, base_latency)
    _mark_pareto(evaluated, goal_batch, labels is not None)
    best = _choose(evaluated, goal_batch, goals.latency_stat, base_doc)
    if best is not None:
        best = _ablate(best, evaluated, run_candidate, base_latency)
        best.status = "chosen"
        for ev in evaluated:
            if ev.status == "accepted":
                ev.reason = _lost_to(ev, best)
        for ev in evaluated:
            if ev.status == "rejected" and ev.pareto and not ev.reason:
                ev.reason = "on the Pareto front but misses a goal"
    verification = None
    if best is not None and best.artifact is not None:
        verification = _verify(ref_outs, best.artifact, best.candidate.runtime, eval_ds, eval_limit, goals)
    goal_results = best.goals if best is not None else assess(goals, base_doc, base_doc, goal_batch)
    fallback = model
    if best is None:
        notes.append("no gain on this target: no candidate met the quality goals and beat the baseline; the "
                     "original model is handed back" + (", normalised" if model.format is Format.ONNX else ""))
        if model.format is Format.ONNX:
            from slimforge.convert.normalize import NormalizeConfig

            try:
                fallback, _ = cache.build(model, base_key, (NormalizeConfig(),), ctx)
            except (SlimforgeError, RuntimeError, ValueError, OSError):
                fallback = model
    return SearchResult(artifact=best.artifact if best is not None else fallback, baseline=model, target=tgt,
                        goals=goals, goal_batch=goal_batch, baseline_measurement={**base_doc, "runtime": base_rt},
                        evaluated=evaluated, best=best, goal_results=goal_results, notes=notes,
                        verification=verification, seconds=time.perf_counter() - t0, machine=machine.to_dict(),
                        steps_built=cache.built, steps_cached=cache.hits)


def _quality_value(ev: Evaluated, labelled: bool) -> float:
    return ev.quality.get("accuracy" if labelled else "cosine", 0.0)


def _mark_pareto(evaluated: list[Evaluated], batch: int, labelled: bool) -> None:
    """Pareto front over (latency, quality, size) among the candidates that were measured."""
    pts = [e for e in evaluated if e.latency]
    for e in pts:
        lat, q, s = e.latency[batch]["p50"], _quality_value(e, labelled), e.size_mb or 0.0
        e.pareto = not any(
            (o.latency[batch]["p50"] <= lat and _quality_value(o, labelled) >= q and (o.size_mb or 0.0) <= s)
            and (o.latency[batch]["p50"] < lat or _quality_value(o, labelled) > q or (o.size_mb or 0.0) < s)
            for o in pts if o is not e)


def _speedup(e: Evaluated, base_doc: dict[str, Any]) -> float:
    """Geometric mean over the measured batch sizes of the baseline's p50 over the candidate's."""
    ratios = [base_doc["latency"][b]["p50"] / v["p50"] for b, v in e.latency.items() if b in base_doc["latency"]]
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else 0.0


def _choose(evaluated: list[Evaluated], batch: int, stat: str, base_doc: dict[str, Any]) -> Evaluated | None:
    """Among candidates that meet the quality goals and never slow down: all goals met first, then the fewest and
    smallest misses (relative), then the highest speedup (geometric mean over the target's batch sizes), then size."""
    ok = [e for e in evaluated if e.status == "accepted"]
    if not ok:
        return None

    def rank(e: Evaluated) -> tuple:
        missed = [g for g in e.goals if not g.met]
        shortfall = sum(abs(g.margin or 0) / max(abs(g.target), 1e-9) for g in missed)
        return (len(missed), round(shortfall, 6), -_speedup(e, base_doc), e.size_mb or 0.0)

    return min(ok, key=rank)


def _slowdowns(ev: Evaluated, base_latency: Any) -> str:
    """The batch sizes at which ``ev`` is slower than the baseline, with both timings ("" when none)."""
    return ", ".join(f"{b} ({v['p50']:.2f} vs {base_latency(b):.2f} ms)" for b, v in ev.latency.items()
                     if v["p50"] > base_latency(b))


def _recheck_no_slowdown(evaluated: list[Evaluated], base_latency: Any) -> None:
    """The no-slowdown rule again after the runoff re-timed the baseline: every accepted candidate, finalist or
    not, must be at least as fast as the baseline at every batch size, or it is rejected with the timings."""
    for ev in evaluated:
        slower = _slowdowns(ev, base_latency) if ev.status == "accepted" else ""
        if slower:
            how = ("when timed side by side" if next(iter(ev.latency.values())).get("runoff")
                   else "re-timed in the runoff (it was not a finalist)")
            ev.status, ev.reason = "rejected", f"slower than the baseline {how} at batch {slower}"


def _runoff(accepted: list[Evaluated], base_doc: dict[str, Any], feeds: Any, batch_sizes: tuple[int, ...],
            threads: int | None, ctx: RunContext, finalists: int = 6, rounds: int = 3,
            baseline: tuple[Artifact, str] | None = None) -> None:
    """Re-time the leading candidates and the baseline side by side (interleaved rounds), so that neither the
    choice between close candidates nor the no-slowdown rule is decided by noise from one measurement each; their
    latencies become the medians of the rounds."""
    from slimforge.bench.timing import Timing, time_session
    from slimforge.runtimes import open_session

    lead = sorted(accepted, key=lambda e: -_speedup(e, base_doc))[:finalists]
    if not lead:
        return
    spec = BenchSpec(warmup=2, repeats=10, min_time_s=0.2, max_time_s=4.0)
    sessions = []
    try:
        for e in lead:
            sessions.append(open_session(e.artifact, e.candidate.runtime, threads=threads))
        if baseline is not None:
            sessions.append(open_session(baseline[0], baseline[1], threads=threads))
        by_batch = {b: feeds(b) for b in batch_sizes}
        samples: dict[tuple[int, int], list[float]] = {}
        for r in range(rounds):
            ctx.report_progress("runoff of the leading candidates", r, rounds)
            for b, f in by_batch.items():
                for i, s in enumerate(sessions):
                    t = time_session(s, f, spec)
                    samples.setdefault((i, b), []).append(t.p50 / 1000.0)
        ctx.report_progress("runoff of the leading candidates", rounds, rounds)
    except (SlimforgeError, RuntimeError, ValueError) as exc:
        log.warning("runoff skipped: %s", exc)
        return
    finally:
        for s in sessions:
            s.close()
    for i, e in enumerate(lead):
        for b in batch_sizes:
            med = Timing.from_samples(samples[(i, b)]).p50
            e.latency[b] = {**e.latency[b], "p50": med, "runoff": True}
    if baseline is not None:
        for b in batch_sizes:
            base_doc["latency"][b] = {**base_doc["latency"][b], "p50": Timing.from_samples(
                samples[(len(lead), b)]).p50, "runoff": True}


def _ablate(best: Evaluated, evaluated: list[Evaluated], run_candidate: Any, base_latency: Any) -> Evaluated:
    """Keep an optional step of the winner only if the winner is faster with it than without it; the variant
    without it must itself meet the quality goals and never be slower than the baseline."""
    for idx in sorted(best.candidate.optional, reverse=True):
        if idx >= len(best.candidate.steps):
            continue
        step = best.candidate.steps[idx].kind
        variant = dataclasses.replace(best.candidate, name=f"{best.candidate.name} without {step}",
                                      steps=best.candidate.steps[:idx] + best.candidate.steps[idx + 1:], optional=())
        ev = Evaluated(variant)
        evaluated.append(ev)
        try:
            missed_quality = run_candidate(ev)
        except _BUILD_ERRORS as exc:
            ev.status, ev.reason = "failed", _failure(exc)
            continue
        with_step = sum(v["p50"] for v in best.latency.values())
        without = sum(v["p50"] for v in ev.latency.values())
        slower = _slowdowns(ev, base_latency)
        if slower and not missed_quality:
            ev.status = "rejected"
            ev.reason = f"ablation: without '{step}' it is slower than the baseline at batch {slower}"
        elif without <= with_step and not missed_quality:
            ev.status = "accepted"
            best.status, best.reason = "rejected", (f"its step '{step}' did not help: "
                                                     f"{with_step:.2f} ms with it vs {without:.2f} ms without")
            best = ev
        else:
            ev.status, ev.reason = "rejected", (f"ablation: without '{step}' it is slower "
                                                f"({without:.2f} vs {with_step:.2f} ms summed over batch sizes)")
    return best


_BUILD_ERRORS = (SlimforgeError, RuntimeError, ValueError, OSError, ImportError)


def _failure(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _labels(ds: Any, limit: int) -> np.ndarray | None:
    """The labels of the first ``limit`` examples, when every batch has them (read from the data, no model run)."""
    parts = [b.labels for b in ds.batches(32, limit=limit)]
    return np.concatenate(parts) if parts and all(p is not None for p in parts) else None


def _lost_to(ev: Evaluated, best: Evaluated) -> str:
    parts = ", ".join(f"batch {b}: {v['p50']:.2f} vs {best.latency[b]['p50']:.2f} ms" for b, v in ev.latency.items()
                      if b in best.latency)
    return f"meets the quality goals; the chosen '{best.candidate.name}' is faster overall ({parts})"


def _divergence_hint(model: Artifact, art: Artifact, ds: Any) -> str:
    """For an ONNX candidate that drifted: the first node whose output error jumps (what to keep in float)."""
    if model.format is not Format.ONNX or art.format is not Format.ONNX or art.path is None or model.path is None:
        return ""
    from slimforge.convert.divergence import first_divergence

    try:
        feeds = next(ds.batches(4)).feeds
        found = first_divergence(model.path, art.path, feeds)
    except Exception as exc:  # noqa: BLE001 - a hint only
        log.info("divergence analysis failed: %s", exc)
        return ""
    return f"first divergent node: {found['node']} ({found['op_type']}, relative error {found['rel_error']:.3g})" \
        if found else ""


def _verify(ref: list[np.ndarray], art: Artifact, rt: str, ds: Any, limit: int, goals: Goals) -> Check:
    """The final artifact, run afresh, against the original model's outputs (every output) on the evaluation data."""
    from slimforge.evaluation.metrics import fidelity_metrics
    from slimforge.evaluation.run import collect_outputs

    out, _ = collect_outputs(art, ds, runtime=rt, limit=limit)
    if len(ref) != len(out):
        return Check("verify_against_original", False, {}, f"{len(out)} outputs, the original has {len(ref)}")
    per = [fidelity_metrics([r], [o]) for r, o in zip(ref, out)]
    metrics = {f"output{i}_cosine": p["cosine"] for i, p in enumerate(per)}
    metrics.update({f"output{i}_max_abs": p["max_abs"] for i, p in enumerate(per)})
    worst = min(p["cosine"] for p in per)
    floor = goals.min_cosine if goals.min_cosine is not None else 0.9
    passed = worst >= floor
    return Check("verify_against_original", passed, metrics,
                 f"{len(per)} output(s) against the original on {min(len(ds), limit)} examples: worst cosine "
                 f"{worst:.5f} (floor {floor})")
