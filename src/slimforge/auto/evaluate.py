"""Build and evaluate: each candidate is built by the engine (through the step cache), measured with the one timing
loop on its runtime, scored on the same held-out data against the same reference outputs, and assessed against
every goal."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimforge.auto.candidates import Candidate
from slimforge.auto.goals import GoalResult, Goals, assess
from slimforge.bench import BenchSpec, Ratio, Timing, measure
from slimforge.core.artifact import Artifact, Check, Format
from slimforge.core.context import RunContext
from slimforge.errors import TechniqueFailed as TechniqueFailedTypes
from slimforge.plan.cache import MeasureCache, StepCache, data_fingerprint, digest
from slimforge.plan.engine import chain_key, run_steps

log = logging.getLogger(__name__)

QUALITY_GOALS = ("min_accuracy", "max_accuracy_drop", "min_cosine")


@dataclass
class Evaluated:
    """One candidate's measurements and verdict. ``latency`` holds per batch size the timing (p50 with its interval
    ``ci``); ``ratio`` the speedup over the baseline with its interval."""

    candidate: Candidate
    status: str = "pending"  # chosen | accepted | rejected | failed | skipped
    reason: str = ""
    latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    ratio: dict[int, Ratio] = field(default_factory=dict)
    shapes: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    size_mb: float | None = None
    peak_memory_mb: float | None = None
    quality: dict[str, float] = field(default_factory=dict)
    goals: list[GoalResult] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    pareto: bool = False
    runoff: bool = False
    artifact: Artifact | None = None
    at_sizes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the user's further sizes, timed side by side
    size_ratio: dict[str, Ratio] = field(default_factory=dict)
    end_to_end: dict[int, dict[str, Any]] = field(default_factory=dict)  # GPU: host in, host out, per batch
    roofline: dict[str, float | None] = field(default_factory=dict)  # flops_per_item, peak_gflops (bench.flops)

    def measurement(self) -> dict[str, Any]:
        return {"latency": self.latency, "size_mb": self.size_mb, "peak_memory_mb": self.peak_memory_mb,
                "quality": self.quality}

    def timing(self, batch: int) -> Timing:
        return timing_of(self.latency[batch])


def timing_of(d: dict[str, Any]) -> Timing:
    ci = d.get("ci") or [d["p50"], d["p50"]]
    return Timing(d["p50"], d.get("p95", d["p50"]), d.get("p99", d["p50"]), d.get("mean", d["p50"]),
                  d.get("min", d["p50"]), int(d.get("n", 1)), ci[0], ci[1], int(d.get("rounds", 1)))


def quality(ref: list[np.ndarray], cand: list[np.ndarray], labels: np.ndarray | None, task: str) -> dict[str, float]:
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


class Evaluator:
    """Everything a candidate is judged with: the model, the evaluation data and its reference outputs, the feeds
    and batch sizes timed, the goals, and the caches."""

    def __init__(self, model: Artifact, *, ctx: RunContext, cache: StepCache, measures: MeasureCache, eval_ds: Any,
                 eval_limit: int, feeds: Any, batch_sizes: tuple[int, ...], spec: BenchSpec, threads: int | None,
                 goals: Goals, goal_batch: int, data_key: str, target_key: str, device: str = "cpu") -> None:
        self.model, self.ctx, self.cache, self.measures = model, ctx, cache, measures
        self.eval_ds, self.eval_limit, self.feeds = eval_ds, eval_limit, feeds
        self.batch_sizes, self.spec, self.threads = batch_sizes, spec, threads
        self.goals, self.goal_batch, self.target_key = goals, goal_batch, target_key
        self.device = device  # where the baseline runs and every candidate is timed (cuda: the gpu target)
        self.quality_goals = Goals(**{k: v for k, v in goals.to_dict().items() if k in QUALITY_GOALS})
        self.task = str(model.meta.get("task") or "generic")
        self.mkey = (batch_sizes, threads, data_key, len(eval_ds), eval_limit, spec, self.task,
                     goals.max_memory_mb is not None, device)
        self.base_doc: dict[str, Any] = {}
        self.ref_outs: list[np.ndarray] = []
        self.labels: np.ndarray | None = None

    def measure(self, art: Artifact, runtime: str, key: str) -> tuple[dict[str, Any], list[np.ndarray], bool]:
        """Latency, size, memory and outputs, from the measurement cache when this exact thing was measured."""
        from slimforge.evaluation.run import collect_outputs

        mkey = digest(key, runtime, self.mkey)
        hit = self.measures.get(mkey)
        if hit is not None:
            doc, outs = hit
            doc["latency"] = {int(b): v for b, v in doc["latency"].items()}
            doc["shapes"] = {int(b): v for b, v in (doc.get("shapes") or {}).items()}
            return doc, outs, True
        outs, _ = collect_outputs(art, self.eval_ds, runtime=runtime, limit=self.eval_limit, device=self.device)
        memory = self.goals.max_memory_mb is not None
        bench = measure(art, runtime, self.feeds, batch_sizes=self.batch_sizes, spec=self.spec, threads=self.threads,
                        measure_memory=memory, device=self.device)
        gpu = bench.device == "cuda"  # on a GPU: device memory, and the end-to-end latency beside compute
        doc = {"latency": {b: t.to_dict() for b, t in bench.latency_ms.items()}, "shapes": bench.shapes,
               "size_mb": art.size_bytes() / 1e6,
               "peak_memory_mb": bench.device_memory_mb if gpu else bench.peak_memory_mb if memory else None,
               "end_to_end": {b: t.to_dict() for b, t in bench.end_to_end_ms.items()},
               "flops_per_item": bench.flops_per_item, "peak_gflops": bench.peak_gflops}
        self.measures.put(mkey, doc, outs)
        return doc, outs, False

    def baseline(self, runtime: str, labelled: bool) -> dict[str, Any]:
        from slimforge.evaluation.tasks import detect_task

        try:
            doc, self.ref_outs, _ = self.measure(self.model, runtime, chain_key(self.model, ()))
        except Exception as exc:  # the original itself does not run: one line naming the inputs and the fix
            raise baseline_error(self.model, self.feeds, exc) from exc
        self.task = detect_task(self.model.io, self.ref_outs, {"task": self.task})
        self.labels = labels_of(self.eval_ds, self.eval_limit) if labelled and self.task != "embedding" else None
        doc["quality"] = quality(self.ref_outs, self.ref_outs, self.labels, self.task)
        doc["runtime"] = runtime
        self.base_doc = doc
        return doc

    def run(self, ev: Evaluated) -> list[GoalResult]:
        """Build, measure and assess ``ev``; returns the quality goals it misses. Build errors propagate."""
        art = run_steps(self.model, ev.candidate.recipe, self.ctx, cache=self.cache, target=self.target_key)
        doc, outs, ev.cached = self.measure(art, ev.candidate.runtime,
                                            chain_key(self.model, ev.candidate.steps, self.target_key))
        ev.artifact = art
        ev.latency, ev.size_mb, ev.peak_memory_mb = doc["latency"], doc["size_mb"], doc.get("peak_memory_mb")
        ev.shapes = doc.get("shapes") or {}
        ev.end_to_end = doc.get("end_to_end") or {}
        ev.roofline = {k: doc.get(k) for k in ("flops_per_item", "peak_gflops")}
        ev.ratio = {b: Ratio.between(timing_of(self.base_doc["latency"][b]), ev.timing(b)) for b in ev.latency
                    if b in self.base_doc["latency"]}
        ev.quality = quality(self.ref_outs, outs, self.labels, self.task)
        return self.judge(ev)

    def judge(self, ev: Evaluated) -> list[GoalResult]:
        """Assess every goal; return the quality goals it misses."""
        ev.goals = assess(self.goals, ev.measurement(), self.base_doc, self.goal_batch)
        return [g for g in assess(self.quality_goals, ev.measurement(), self.base_doc, self.goal_batch)
                if not g.met]

    def memory(self, art: Artifact, runtime: str) -> float | None:
        """Peak memory of loading and running ``art`` at the largest batch, in a fresh process (as every runtime
        is measured); None when it cannot be measured."""
        from slimforge.bench.memory import peak_memory_mb

        try:
            mb, _ = peak_memory_mb(art, runtime, self.feeds(max(self.batch_sizes)), threads=self.threads)
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("memory measurement failed: %s", exc)
            return None
        return mb

    def verify(self, art: Artifact, runtime: str) -> Check:
        """The final artifact, run afresh, against the original model's outputs (every output) on the evaluation
        data."""
        from slimforge.evaluation.metrics import fidelity_metrics
        from slimforge.evaluation.run import collect_outputs

        out, _ = collect_outputs(art, self.eval_ds, runtime=runtime, limit=self.eval_limit, device=self.device)
        ref = self.ref_outs
        if len(ref) != len(out) or not ref:
            return Check("verify_against_original", False, {}, f"{len(out)} outputs, the original has {len(ref)}")
        try:
            per = [fidelity_metrics([r], [o]) for r, o in zip(ref, out)]
        except ValueError as exc:  # shapes that do not match
            return Check("verify_against_original", False, {}, f"outputs cannot be compared: {exc}")
        metrics = {f"output{i}_cosine": p["cosine"] for i, p in enumerate(per)}
        metrics.update({f"output{i}_max_abs": p["max_abs"] for i, p in enumerate(per)})
        worst = min(p["cosine"] for p in per)
        floor = self.goals.min_cosine if self.goals.min_cosine is not None else 0.9
        return Check("verify_against_original", worst >= floor, metrics,
                     f"{len(per)} output(s) against the original on {min(len(self.eval_ds), self.eval_limit)} "
                     f"examples: worst cosine {worst:.5f} (floor {floor})")

    def divergence_hint(self, art: Artifact) -> str:
        """For an ONNX candidate that drifted: the first node whose output error jumps (what to keep in float)."""
        model = self.model
        if model.format is not Format.ONNX or art.format is not Format.ONNX or art.path is None or not model.path:
            return ""
        from slimforge.convert.divergence import first_divergence

        try:
            feeds = next(self.eval_ds.batches(4)).feeds
            found = first_divergence(model.path, art.path, feeds)
        except Exception as exc:  # noqa: BLE001 - a hint only
            log.info("divergence analysis failed: %s", exc)
            return ""
        return (f"first divergent node: {found['node']} ({found['op_type']}, relative error "
                f"{found['rel_error']:.3g})") if found else ""


def baseline_error(model: Artifact, feeds: Any, exc: BaseException) -> Exception:
    """The error for an original model that does not run on the inputs it is given."""
    from slimforge.errors import InputError, SlimforgeError
    from slimforge.io.shapes import shape_hint

    if isinstance(exc, SlimforgeError) and not isinstance(exc, TechniqueFailedTypes):
        return exc
    try:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds(1).items())
    except Exception:  # noqa: BLE001 - the shapes are only for the message
        shapes = "its inputs"
    text = str(exc).strip().splitlines()
    why = text[0].split("Status Message: ")[-1].split("] : ")[-1] if text else type(exc).__name__
    why = re.sub(r"^\S+\.(h|cc|cpp):\d+ \S+ ", "", why)[:200]  # ORT's source location
    dims = model.meta.get("dims") or {}
    if model.path is not None and (not dims.get("ok") or any(r.get("user") for r in dims.get("rules", {}).values())):
        from slimforge.io.shapes import probed_examples

        found = probed_examples(model, None, model.source_id)  # what the model takes when left to the probe
        dims = found[1] if found else dims
    rules = (dims.get("rules") or {}).values()
    steps = sorted({int(r["step"]) for r in rules if r.get("kind") == "image" and (r.get("step") or 1) > 1})
    stride = f", its image sizes multiples of {steps[0]}" if len(steps) == 1 else ""
    return InputError(f"{model.name}: the original model does not run on {shapes} ({why}); give the shapes it "
                      f"takes with {shape_hint(model.io)}{stride} (or pass --data)")


def labels_of(ds: Any, limit: int) -> np.ndarray | None:
    """The labels of the first ``limit`` examples, when every batch has them (read from the data, no model run)."""
    parts = [b.labels for b in ds.batches(32, limit=limit)]
    return np.concatenate(parts) if parts and all(p is not None for p in parts) else None


__all__ = ["Evaluated", "Evaluator", "data_fingerprint", "labels_of", "quality", "timing_of"]
