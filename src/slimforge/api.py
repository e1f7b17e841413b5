"""The public Python API. The CLI and server are thin layers over these functions."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from slimforge.bench.timing import BenchResult, BenchSpec, measure
from slimforge.core.artifact import Artifact, Check
from slimforge.core.context import ProgressFn, RunContext
from slimforge.core.outputs import claim_output_dir, prepare_output_file, write_text
from slimforge.core.registry import apply
from slimforge.errors import DataError
from slimforge.evaluation.metrics import Metric
from slimforge.io.data import Dataset, bundled_sentences_path, load_data
from slimforge.io.models import default_model_path, load
from slimforge.io.synth import synthesize
from slimforge.plan.recipe import Recipe, default_recipe

log = logging.getLogger("slimforge")
log.addHandler(logging.NullHandler())

_RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}

ModelLike = str | Path | nn.Module | Artifact


def _as_artifact(model: ModelLike | None, **load_kw: Any) -> Artifact:
    if isinstance(model, Artifact):
        return model
    return load(default_model_path() if model is None else model, **load_kw)


def _as_data(data: str | Path | Dataset | None, art: Artifact, *, default_text: bool = False) -> Dataset | None:
    if data is None:
        pre = art.meta.get("preprocess") or {}
        if default_text and pre.get("kind") == "text":
            return load_data(bundled_sentences_path(), art)
        return None
    if isinstance(data, (str, Path)):
        return load_data(data, art)
    return data


def export(model: ModelLike, output: str | Path | None = None, *, opset: int = 17,
           dynamic_axes: Sequence[str] = (), exporter: str = "auto", verify: bool = True, atol: float = 1e-4,
           rtol: float = 1e-4, external_data: str = "auto", workdir: str | Path | None = None,
           progress: ProgressFn | None = None, **load_kw: Any) -> Artifact:
    """Export a torch model to ONNX and verify it against the source on several input shapes.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.export(torch.nn.Linear(4, 2), "/tmp/slimforge-doc/lin.onnx",
        ...                        example_inputs=torch.randn(1, 4))
        >>> art.checks[0].passed
        True
    """
    from slimforge.convert.onnx import ExportConfig

    cfg = ExportConfig(opset=opset, dynamic_axes=tuple(dynamic_axes), exporter=exporter, verify=verify,
                       atol=atol, rtol=rtol, external_data=external_data)
    art = _as_artifact(model, **load_kw)
    if output is not None:
        output = prepare_output_file(output, inputs=[art.path])
    ctx = RunContext(workdir=workdir, progress=progress, output=Path(output) if output else None)
    out = apply(art, cfg, ctx)
    if output is not None and out.path is not None:
        from slimforge.io.save import write_sidecar

        write_sidecar(out, out.path)  # preprocessing (tokenizer, image transforms) and lineage travel with the file
    return out


def feeds_for(art: Artifact, data: Dataset | None, *, seq: int = 64) -> Callable[[int], dict[str, np.ndarray]]:
    """A function giving model feeds at a batch size: the first examples of ``data``, else synthesised inputs."""

    def make(batch: int) -> dict[str, np.ndarray]:
        if data is None:
            return synthesize(art.io, batch=batch, seq=seq, examples=art.examples, meta=art.meta)
        first = next(data.batches(batch), None)
        if first is None:
            raise DataError(f"{data.name}: no examples to benchmark with")
        feeds = first.feeds
        n = len(next(iter(feeds.values())))
        if n < batch:  # fewer examples than the batch size: repeat them
            reps = -(-batch // n)
            feeds = {k: np.concatenate([v] * reps)[:batch] for k, v in feeds.items()}
        return feeds

    return make


def benchmark(models: ModelLike | Sequence[ModelLike], *, runtime: str | None = None,
              batch_sizes: Sequence[int] = (1, 32), data: str | Path | Dataset | None = None,
              threads: int | None = None, device: str = "cpu", precision: str | None = None,
              spec: BenchSpec = BenchSpec(), progress: ProgressFn | None = None) -> list[BenchResult]:
    """Measure latency (p50/p95/p99/mean), throughput, peak memory and size of each model, one after the other.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> r = slimforge.benchmark(art, batch_sizes=(1,), spec=slimforge.BenchSpec(repeats=5, min_time_s=0))[0]
        >>> r.latency_ms[1].n >= 5
        True
    """
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    results = []
    for i, m in enumerate(items):
        art = _as_artifact(m)
        ds = _as_data(data, art, default_text=True)
        results.append(measure(art, runtime, feeds_for(art, ds), batch_sizes=tuple(batch_sizes), spec=spec,
                               threads=threads, device=device, precision=precision))
        if progress is not None:
            from slimforge.core.context import ProgressEvent

            progress(ProgressEvent("benchmark", i + 1, len(items)))
    return results


def evaluate(candidate: ModelLike, data: str | Path | Dataset | None = None, *, reference: ModelLike | None = None,
             runtime: str | None = None, limit: int | None = 512) -> dict[str, Metric]:
    """Quality of ``candidate`` on data: accuracy with labels; cosine, SQNR, neighbour agreement vs ``reference``.

    Example:
        >>> # slimforge.evaluate("model-int8.onnx", "sentences.txt", reference="model.onnx")["cosine"].value
    """
    from slimforge.evaluation.run import evaluate as _evaluate

    cand = _as_artifact(candidate)
    ref = _as_artifact(reference) if reference is not None else None
    ds = _as_data(data, ref or cand, default_text=True)
    if ds is None:
        raise DataError("evaluation needs data: pass data=... (an image folder, a text file, .npy/.npz or CSV)")
    return _evaluate(cand, ds, reference=ref, runtime=runtime, limit=limit)


def info(model: ModelLike) -> dict[str, Any]:
    """Inputs, outputs, op or module histogram, parameter count and size of a model.

    Example:
        >>> import torch, slimforge
        >>> slimforge.info(slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4)))["parameters"]
        10
    """
    from slimforge.convert.info import model_info

    return model_info(_as_artifact(model))


def quantize(model: ModelLike, method: str = "dynamic", *, calibration: str = "minmax", per_channel: bool = True,
             data: str | Path | Dataset | None = None, runtime: str | None = None, output: str | Path | None = None,
             num_samples: int = 128, exclude: Sequence[str] = (), min_cosine: float | None = None,
             max_drop: float | None = None, metric: str = "auto", batch_sizes: Sequence[int] = (1, 32),
             check_speed: bool = True, spec: BenchSpec = BenchSpec(), workdir: str | Path | None = None,
             progress: ProgressFn | None = None) -> Artifact:
    """Quantize a model with one method for one runtime; the result carries its fidelity check and, unless
    ``check_speed`` is off, a ``no_slowdown`` check comparing it with its FP32 input on the same runtime.

    Methods: ``dynamic``, ``static`` (calibration ``minmax``, ``entropy`` or ``percentile``; needs data), ``fp16``,
    ``bf16``, ``int4``, ``int8-weight``. ``min_cosine`` overrides the method's fidelity floor (output cosine to the
    FP32 input on the calibration data, or synthetic inputs without data); below it the step raises. ``max_drop``
    turns on accuracy-aware mixed precision (static/dynamic on ONNX Runtime): the fewest layers are kept in float
    so that the drop in ``metric`` (accuracy points with labelled data, else output cosine) stays within it.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(64, 64), example_inputs=torch.randn(1, 64))
        >>> q = slimforge.quantize(art, "dynamic", runtime="torch", check_speed=False)
        >>> q.checks[-1].name, q.meta["precision"]
        ('quant_fidelity', 'int8-dynamic')
    """
    from slimforge.plan.engine import run_steps
    from slimforge.techniques.quantize.methods import Method, default_runtime_for, quantize_steps

    art = _as_artifact(model)
    chosen = Method.parse(method)
    rt = runtime or default_runtime_for(art, chosen)
    steps = quantize_steps(art, chosen, runtime=rt, calibration=calibration, per_channel=per_channel,
                           num_samples=num_samples, exclude=tuple(exclude), min_cosine=min_cosine,
                           max_drop=max_drop, metric=metric)
    ds = _as_data(data, art, default_text=True)
    if output is not None:
        output = prepare_output_file(output, inputs=[art.path])
    ctx = RunContext(workdir=workdir, progress=progress, calibration_data=ds)
    prepared = run_steps(art, Recipe(steps=tuple(steps[:-1]), runtime=rt), ctx) if len(steps) > 1 else art
    out = run_steps(prepared, Recipe(steps=(steps[-1],), runtime=rt), ctx,
                    output=Path(output) if output else None)
    if check_speed:
        out = out.with_check(speed_check(prepared, out, rt, feeds_for(art, ds), batch_sizes=tuple(batch_sizes),
                                         spec=spec))
    return out


def speed_check(reference: Artifact, candidate: Artifact, runtime: str, feeds: Callable[[int], dict],
                *, batch_sizes: tuple[int, ...], spec: BenchSpec) -> Check:
    """The no-slowdown guard: time both on ``runtime``, interleaved per batch size; passes when the candidate's p50
    is not above the reference's at any batch size."""
    from slimforge.runtimes import open_session
    from slimforge.bench.timing import time_session

    metrics: dict[str, float] = {}
    slower = []
    sessions = [open_session(reference, runtime), open_session(candidate, runtime)]
    try:
        for b in batch_sizes:
            f = feeds(b)
            ref_t, cand_t = (time_session(s, f, spec) for s in sessions)
            metrics[f"speedup_b{b}"] = ref_t.p50 / cand_t.p50
            metrics[f"reference_p50_ms_b{b}"] = ref_t.p50
            metrics[f"p50_ms_b{b}"] = cand_t.p50
            if cand_t.p50 > ref_t.p50:
                slower.append(b)
    finally:
        for s in sessions:
            s.close()
    detail = (f"SLOWER than its FP32 input on {runtime} at batch {', '.join(map(str, slower))}" if slower else
              f"faster than its FP32 input on {runtime}: " +
              ", ".join(f"batch {b}: {metrics[f'speedup_b{b}']:.2f}x" for b in batch_sizes))
    return Check("no_slowdown", not slower, metrics, detail)


@dataclass
class OptimizeResult:
    """What ``optimize`` hands back: the artifact, the report document and the files written."""

    artifact: Artifact
    baseline: Artifact
    report: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def optimize(model: ModelLike | None = None, *, data: str | Path | Dataset | None = None,
             output_dir: str | Path = "slimforge-out", recipe: Recipe | None = None,
             batch_sizes: Sequence[int] = (1, 32), threads: int | None = None, eval_limit: int = 512,
             spec: BenchSpec = BenchSpec(), progress: ProgressFn | None = None, target: Any = None,
             goals: Any = None, time_budget_s: float = 900.0, use_cache: bool = True, force: bool = False) -> Any:
    """With ``target`` (``cpu``, ``server``, ``edge``, ``mobile``, ``gpu``, a preset YAML) or ``goals``: search
    for the best artifact under the goals (``slimforge.auto``) and return an ``AutoResult``.

    Otherwise run a recipe (default: export -> verify -> graph-optimise -> dynamic INT8 -> verify), benchmark the
    baseline against the result, evaluate both on the data, write the report and return an ``OptimizeResult``.
    With no model, uses the bundled all-MiniLM-L6-v2 and the bundled sentences.

    Example:
        >>> # res = slimforge.optimize()  # the demo: MiniLM, 2,884 bundled sentences
        >>> # res = slimforge.optimize("m.onnx", target="cpu", goals={"min_cosine": 0.995}, data="sentences.txt")
        >>> # res.goals_met, res.missed
    """
    if target is not None or goals is not None:
        from slimforge.auto import auto_optimize

        return auto_optimize(model, target=target or "cpu", goals=goals, data=data, output_dir=output_dir,
                             time_budget_s=time_budget_s, progress=progress, use_cache=use_cache,
                             eval_limit=min(eval_limit, 256), force=force)
    base = _as_artifact(model)
    ds = _as_data(data, base, default_text=True)
    recipe = recipe or default_recipe(base, batch_sizes=tuple(batch_sizes), threads=threads)
    recipe = check_recipe(base, recipe)
    with claim_output_dir(output_dir, force=force, inputs=[base.path]) as out_dir:
        return _run_recipe(base, ds, recipe, out_dir, eval_limit=eval_limit, spec=spec, progress=progress)


def _run_recipe(base: Artifact, ds: Dataset | None, recipe: Recipe, out_dir: Path, *, eval_limit: int,
                spec: BenchSpec, progress: ProgressFn | None) -> OptimizeResult:
    """The fixed recipe's work: steps (in scratch space), evaluation, benchmark; the artifact and its report are
    written to ``out_dir`` together at the end, so a failed or killed run leaves neither."""
    from slimforge.evaluation.run import collect_outputs, quality_metrics
    from slimforge.io.save import save
    from slimforge.plan.engine import run_steps
    from slimforge.report import build_report, variant_entry, write_report

    ctx = RunContext(progress=progress, threads=recipe.threads, calibration_data=ds)
    result = run_steps(base, recipe, ctx)

    quality_base: dict[str, Metric] = {}
    quality_result: dict[str, Metric] = {}
    if ds is not None:
        ctx.report_progress("evaluate", 0, 2)
        ref_out, labels = collect_outputs(base, ds, runtime=recipe.baseline_runtime, limit=eval_limit)
        ctx.report_progress("evaluate", 1, 2)
        res_out, _ = collect_outputs(result, ds, runtime=recipe.runtime, limit=eval_limit)
        ctx.report_progress("evaluate", 2, 2)
        task = str(base.meta.get("task") or "generic")
        quality_base = quality_metrics(task, ref_out, ref_out, labels)
        quality_result = quality_metrics(task, res_out, ref_out, labels)

    feeds = feeds_for(base, ds)
    n = len(recipe.batch_sizes)
    ctx.report_progress("benchmark baseline", 0, n)
    b_bench = measure(base, recipe.baseline_runtime, feeds, batch_sizes=recipe.batch_sizes, spec=spec,
                      threads=recipe.threads,
                      on_batch=lambda b: ctx.report_progress("benchmark baseline", recipe.batch_sizes.index(b) + 1, n))
    ctx.report_progress("benchmark result", 0, n)
    r_bench = measure(result, recipe.runtime, feeds, batch_sizes=recipe.batch_sizes, spec=spec,
                      threads=recipe.threads,
                      on_batch=lambda b: ctx.report_progress("benchmark result", recipe.batch_sizes.index(b) + 1, n))
    suffix = {"onnxruntime": ".onnx", "openvino": ".xml"}.get(recipe.runtime)
    if suffix:  # the file is checked to reload with identical outputs; the artifact keeps its lineage and checks
        result = dataclasses.replace(result, path=save(result, out_dir / f"{base.name}-optimized{suffix}").path)
    baseline_label = f"{_RUNTIME_NAMES.get(recipe.baseline_runtime, recipe.baseline_runtime)} FP32"
    report = build_report(
        baseline=variant_entry(baseline_label, base, b_bench, quality_base),
        result=variant_entry(f"{_RUNTIME_NAMES.get(recipe.runtime, recipe.runtime)} "
                             f"{str(result.meta.get('precision', 'fp32')).upper()}", result, r_bench, quality_result),
        artifact=result, recipe=recipe.to_dict(), threads=recipe.threads,
        data={"name": ds.name, "examples": len(ds), "evaluated": min(len(ds), eval_limit)} if ds else None)
    paths = write_report(report, out_dir)
    paths["recipe"] = write_text(out_dir / "recipe.yaml", recipe.to_yaml())
    paths["artifact"] = result.path  # type: ignore[assignment]
    return OptimizeResult(result, base, report, paths)


def check_recipe(base: Artifact, recipe: Recipe) -> Recipe:
    """Refuse, before any work, a recipe whose runtimes are unknown or cannot open what they are given; a recipe
    without a baseline runtime measures the baseline on the model's own runtime."""
    from slimforge.errors import ConfigError
    from slimforge.runtimes import default_runtime, get_runtime

    if not recipe.baseline_runtime:
        recipe = dataclasses.replace(recipe, baseline_runtime=default_runtime(base))
    for role, name in (("runtime", recipe.runtime), ("baseline_runtime", recipe.baseline_runtime)):
        try:
            get_runtime(name)
        except ConfigError as exc:
            raise ConfigError(f"recipe {role}: {exc}") from None
    if base.format not in get_runtime(recipe.baseline_runtime).formats:
        raise ConfigError(f"recipe baseline_runtime {recipe.baseline_runtime} cannot run the {base.format.value} "
                          f"model {base.name}; set baseline_runtime to {default_runtime(base)}")
    return recipe
