"""The public Python API. The CLI and server are thin layers over these functions; techniques take their config
objects, and keyword shortcuts are the config's own fields (``core.config.with_fields``)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from slimforge.bench import BenchResult, BenchSpec, measure_all
from slimforge.bench.compare import FASTER, SLOWER
from slimforge.core.artifact import Artifact, Check, Format
from slimforge.core.config import with_fields
from slimforge.core.context import ProgressFn, RunContext
from slimforge.core.logs import quiet_libraries
from slimforge.core.outputs import claim_output_dir, prepare_output_file, write_text
from slimforge.errors import DataError
from slimforge.evaluation.metrics import Metric
from slimforge.io.data import Dataset
from slimforge.io.inputs import ModelLike, as_artifact, as_data, feeds_for
from slimforge.plan.engine import check_recipe, run_steps
from slimforge.plan.recipe import Recipe, default_recipe

log = logging.getLogger("slimforge")
log.addHandler(logging.NullHandler())

__all__ = ["OptimizeResult", "benchmark", "benchmark_report", "check_recipe", "evaluate", "export", "info",
           "optimize", "quantize", "speed_check"]


@quiet_libraries()
def export(model: ModelLike, output: str | Path | None = None, config: Any = None, *,
           workdir: str | Path | None = None, progress: ProgressFn | None = None, load_kw: dict | None = None,
           **fields: Any) -> Artifact:
    """Export a torch model to ONNX (``ExportConfig``, or its fields as keywords) and verify it against the source
    on several input shapes.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.export(slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4)),
        ...                        "/tmp/slimforge-doc/lin.onnx")
        >>> art.checks[0].passed
        True
    """
    from slimforge.convert.onnx import ExportConfig

    loading = {k: fields.pop(k) for k in ("example_inputs", "input_names", "input_shapes", "name", "task")
               if k in fields}  # how to load a module or file; the rest are ExportConfig's fields
    cfg = with_fields(config or ExportConfig, fields)
    art = as_artifact(model, **{**(load_kw or {}), **loading})
    if output is not None:
        output = prepare_output_file(output, inputs=[art.path])
    out = run_steps(art, Recipe(steps=(cfg,), runtime="onnxruntime"), RunContext(workdir=workdir, progress=progress),
                    output=Path(output) if output else None)
    return out


@quiet_libraries()
def benchmark(models: ModelLike | Sequence[ModelLike], *, runtime: str | None = None,
              batch_sizes: Sequence[int] = (1, 32), data: str | Path | Dataset | None = None,
              threads: int | None = None, device: str = "cpu", precision: str | None = None,
              spec: BenchSpec = BenchSpec(), progress: ProgressFn | None = None) -> list[BenchResult]:
    """Measure latency (median with its interval, p95/p99), throughput, peak memory and size of each model, timed
    side by side in interleaved rounds; each result after the first carries its speedup over the first.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> r = slimforge.benchmark(art, batch_sizes=(1,), spec=slimforge.BenchSpec(repeats=5, min_time_s=0))[0]
        >>> r.latency_ms[1].n >= 5
        True
    """
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    arts = [as_artifact(m) for m in items]
    fns = [feeds_for(a, as_data(data, a, default_text=True)) for a in arts]

    def tick(r: int, n: int) -> None:
        if progress is not None:
            from slimforge.core.context import ProgressEvent

            progress(ProgressEvent("benchmark (interleaved rounds)", r, n))

    results, _ = measure_all([(a, runtime) for a in arts], fns, batch_sizes=tuple(batch_sizes), spec=spec,
                             threads=threads, device=device, precision=precision, on_round=tick)
    return results


@quiet_libraries()
def profile(model: ModelLike, *, runtime: str | None = None, device: str = "cpu", batch: int = 1,
            data: str | Path | Dataset | None = None, runs: int = 20, threads: int | None = None,
            output_dir: str | Path | None = None, force: bool = False) -> Any:
    """Per-layer profile of ``model`` on ``runtime`` (torch models are exported to ONNX for onnxruntime and
    openvino): self time and share, calls, FLOPs, parameters, activation memory, arithmetic intensity and GFLOP/s
    per layer, against the end-to-end latency timed apart. With ``output_dir``: JSON, CSV, HTML and two plots (the
    time per layer and the roofline). Returns a ``bench.profile.ProfileResult``.

    Example:
        >>> # res = slimforge.profile("minilm/", runtime="onnxruntime", batch=8, output_dir="prof")
        >>> # [layer.name for layer in res.bottlenecks(0.05)]
    """
    from slimforge.bench.profiler import profile_model

    art = as_artifact(model)
    if runtime in ("onnxruntime", "openvino") and art.format is Format.TORCH:
        art = export(art)  # verified against the model, like every export
    ds = as_data(data, art, default_text=True) if data is not None else None
    feeds = feeds_for(art, ds)(batch)
    res = profile_model(art, runtime, device=device, batch=batch, feeds=feeds, runs=runs, threads=threads)
    if output_dir is not None:
        from slimforge.report.profile import write_profile

        with claim_output_dir(output_dir, force=force, inputs=[art.path]) as out:
            write_profile(res.to_dict(), out)
    return res


def benchmark_devices(model: ModelLike, *, devices: Sequence[str] = ("cpu", "cuda"),
                      prices: dict[str, float] | None = None, runtime: str | None = None,
                      batch_sizes: Sequence[int] = (1, 32), data: str | Path | Dataset | None = None,
                      threads: int | None = None, spec: BenchSpec = BenchSpec(),
                      output_dir: str | Path | None = None, force: bool = False) -> list[Any]:
    """CPU vs GPU with cost: per device and batch size p50/p95/p99, throughput, the cost of 1,000 inferences at
    ``prices`` ($/hour) and the speedup over the CPU; a device this machine lacks is named as not measured. With
    ``output_dir``: ``benchmark_cpu_gpu.csv``, ``.json`` and ``.png``. Returns ``bench.cost.DeviceRow``s.

    Example:
        >>> # slimforge.benchmark_devices("vit.pt2", prices={"cpu": 0.2, "cuda": 3.5}, output_dir="cost")
    """
    from slimforge.bench.cost import device_benchmark

    art = as_artifact(model)
    rows = device_benchmark(art, feeds_for(art, as_data(data, art, default_text=True)), devices=tuple(devices),
                            prices=prices or {}, batch_sizes=tuple(batch_sizes), runtime=runtime, spec=spec,
                            threads=threads)
    if output_dir is not None:
        from slimforge.report.cost import write_cost_report

        with claim_output_dir(output_dir, force=force, inputs=[art.path]) as out:
            write_cost_report([r.to_dict() for r in rows], out, model=art.name)
    return rows


def benchmark_report(results: Sequence[BenchResult], arts: Sequence[Artifact],
                     data: str | Path | None = None) -> dict[str, Any]:
    """The report document (kind ``benchmark``) of ``benchmark``'s results: the first model is the baseline."""
    from slimforge.report.build import document, timing_section, variant

    vs = [variant(a.name if i else a.name, label=f"{a.name} ({r.runtime})", art=a, bench=r, runtime=r.runtime,
                  status="baseline" if i == 0 else "measured") for i, (r, a) in enumerate(zip(results, arts))]
    return document("benchmark", baseline=vs[0], candidates=vs[1:], chosen=None, threads=results[0].threads,
                    model={"name": arts[0].name}, data={"name": str(data)} if data else None,
                    timing=timing_section(results))


@quiet_libraries()
def evaluate(candidate: ModelLike, data: str | Path | Dataset | None = None, *, reference: ModelLike | None = None,
             runtime: str | None = None, limit: int | None = 512) -> dict[str, Metric]:
    """Quality of ``candidate`` on data: accuracy with labels; cosine, SQNR, neighbour agreement vs ``reference``.

    Example:
        >>> # slimforge.evaluate("model-int8.onnx", "sentences.txt", reference="model.onnx")["cosine"].value
    """
    from slimforge.evaluation.run import evaluate as run_evaluation

    cand = as_artifact(candidate)
    ref = as_artifact(reference) if reference is not None else None
    ds = as_data(data, ref or cand, default_text=True)
    if ds is None:
        raise DataError("evaluation needs data: pass data=... (an image folder, a text file, .npy/.npz or CSV)")
    return run_evaluation(cand, ds, reference=ref, runtime=runtime, limit=limit)


@quiet_libraries()
def info(model: ModelLike) -> dict[str, Any]:
    """Inputs, outputs, op or module histogram, parameter count and size of a model.

    Example:
        >>> import torch, slimforge
        >>> slimforge.info(slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4)))["parameters"]
        10
    """
    from slimforge.convert.info import model_info

    return model_info(as_artifact(model))


@quiet_libraries()
def quantize(model: ModelLike, options: Any = "dynamic", *, data: str | Path | Dataset | None = None,
             runtime: str | None = None, output: str | Path | None = None, batch_sizes: Sequence[int] = (1, 32),
             check_speed: bool = True, spec: BenchSpec = BenchSpec(), workdir: str | Path | None = None,
             progress: ProgressFn | None = None, **fields: Any) -> Artifact:
    """Quantize a model with one method for one runtime. ``options`` is a ``QuantizeOptions`` or a method name;
    its fields (``calibration``, ``per_channel``, ``num_samples``, ``exclude``, ``min_cosine``, ``max_drop``,
    ``metric``) can be given as keywords. The result carries its fidelity check and, unless ``check_speed`` is off,
    a ``no_slowdown`` check: it and its FP32 input timed side by side on the same runtime, on the user's data when
    given (else on representative inputs); the timings and shapes are in ``meta["report"]`` (the report document).

    Methods: ``dynamic``, ``static`` (needs data), ``fp16``, ``bf16``, ``int4``, ``int8-weight``, ``fp8``, ``qat``.
    ``max_drop`` turns on accuracy-aware mixed precision (static/dynamic on ONNX Runtime).

    ``output`` is where the file lands, for every method: ``.onnx`` for ONNX Runtime, ``.xml`` (+ ``.bin``) for
    OpenVINO, ``.pt`` (TorchScript) for the PyTorch runtimes; a suffix that does not fit is refused before any work.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(64, 64), example_inputs=torch.randn(1, 64))
        >>> q = slimforge.quantize(art, "dynamic", runtime="torch", check_speed=False)
        >>> q.checks[-1].name, q.meta["precision"]
        ('quant_fidelity', 'int8-dynamic')
    """
    from slimforge.techniques.quantize.methods import QuantizeOptions, default_runtime_for

    opts = with_fields(options if isinstance(options, QuantizeOptions) else QuantizeOptions(method=options), fields)
    art = as_artifact(model)
    rt = runtime or default_runtime_for(art, opts.method)
    ds = as_data(data, art, default_text=True)  # bad data is refused before any technique is imported
    steps = opts.steps(art, rt)
    if output is not None:
        from slimforge.core.registry import check_steps
        from slimforge.io.save import check_suffix

        if not Path(output).expanduser().is_dir():  # (a folder is refused as such, by prepare_output_file)
            check_suffix(output, check_steps(art.format, steps), what=f"{opts.method.value} on {rt}")
        output = prepare_output_file(output, inputs=[art.path])
    ctx = RunContext(workdir=workdir, progress=progress, calibration_data=ds)
    prepared = run_steps(art, Recipe(steps=tuple(steps[:-1]), runtime=rt), ctx) if len(steps) > 1 else art
    out = run_steps(prepared, Recipe(steps=(steps[-1],), runtime=rt), ctx, output=Path(output) if output else None)
    if check_speed:
        check, results = speed_check(prepared, out, rt, feeds_for(art, ds), batch_sizes=tuple(batch_sizes),
                                     spec=spec)
        out = out.with_check(check)
        out = dataclasses.replace(out, meta={**out.meta, "report": _quantize_report(prepared, out, results, ds)})
    if output is not None and out.path != Path(output):  # an in-memory result: saved there, reloaded, checked
        from slimforge.io.save import save

        saved = save(out, output)
        out = dataclasses.replace(saved, meta={**out.meta, **saved.meta}, lineage=out.lineage, checks=out.checks)
    return out


def _quantize_report(ref: Artifact, out: Artifact, results: list[BenchResult], ds: Any) -> dict[str, Any]:
    """The speed check as the one report document (kind ``quantize``)."""
    from slimforge.report.build import document, timing_section, variant

    base = variant(ref.name, label=f"{ref.name} (FP32 input)", art=ref, bench=results[0],
                   runtime=results[0].runtime, status="baseline")
    res = variant(out.name, label=f"{out.name} ({out.meta.get('precision', 'quantized')})", art=out, bench=results[1],
                  runtime=results[1].runtime, status="chosen", checks=[c.to_dict() for c in out.step_checks])
    return document("quantize", baseline=base, candidates=[res], chosen=res["name"], threads=results[0].threads,
                    model={"name": ref.name}, timing=timing_section(results),
                    data={"name": getattr(ds, "name", None) or "representative synthesised inputs"},
                    checks=[c.to_dict() for c in out.step_checks])


def speed_check(reference: Artifact, candidate: Artifact, runtime: str, feeds: Callable[[int], dict],
                *, batch_sizes: tuple[int, ...], spec: BenchSpec) -> tuple[Check, list[BenchResult]]:
    """The no-slowdown guard: both timed side by side on ``runtime`` (the one timing loop); it fails only when the
    interval of the speedup lies wholly below 1.0 at some batch size. Inside the noise it is a tie, and says so."""
    results, comp = measure_all([(reference, runtime), (candidate, runtime)], feeds, batch_sizes=batch_sizes,
                                spec=spec, measure_memory=False)
    ref, cand = results
    metrics: dict[str, float] = {}
    for b in batch_sizes:
        r = cand.ratio[b]
        metrics.update({f"speedup_b{b}": r.value, f"speedup_lo_b{b}": r.lo, f"speedup_hi_b{b}": r.hi,
                        f"reference_p50_ms_b{b}": ref.latency_ms[b].p50, f"p50_ms_b{b}": cand.latency_ms[b].p50})
    verdicts = {b: cand.ratio[b].verdict for b in batch_sizes}
    slower = [b for b, v in verdicts.items() if v == SLOWER]
    shapes = "; ".join(f"batch {b}: " + ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in cand.shapes[b].items())
                       for b in batch_sizes)
    figures = ", ".join(f"batch {b}: {cand.ratio[b].describe()} ({verdicts[b]})" for b in batch_sizes)
    if slower:
        detail = f"SLOWER than its FP32 input on {runtime} at batch {', '.join(map(str, slower))}: {figures}"
    elif all(v == FASTER for v in verdicts.values()):
        detail = f"faster than its FP32 input on {runtime}: {figures}"
    else:
        detail = f"not slower than its FP32 input on {runtime} (ties are within the noise): {figures}"
    detail += f"; inputs {shapes}; {comp.note()}"
    return Check("no_slowdown", not slower, metrics, detail), results


@dataclass
class OptimizeResult:
    """What ``optimize`` hands back: the artifact, the report document and the files written."""

    artifact: Artifact
    baseline: Artifact
    report: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


@quiet_libraries()
def optimize(model: ModelLike | None = None, *, data: str | Path | Dataset | None = None,
             output_dir: str | Path = "slimforge-out", recipe: Recipe | None = None,
             batch_sizes: Sequence[int] = (1, 32), threads: int | None = None, eval_limit: int = 512,
             spec: BenchSpec = BenchSpec(), progress: ProgressFn | None = None, target: Any = None,
             goals: Any = None, time_budget_s: float = 900.0, use_cache: bool = True, force: bool = False) -> Any:
    """With ``target`` (``cpu``, ``server``, ``edge``, ``mobile``, ``gpu``, a preset YAML) or ``goals``: search
    for the best artifact under the goals (``slimforge.auto``) and return an ``AutoResult``.

    Otherwise run a recipe (default: export -> verify -> graph-optimise -> dynamic INT8 -> verify), time the
    baseline and the result side by side, evaluate both on the data, write the report and return an
    ``OptimizeResult``. With no model, uses the bundled all-MiniLM-L6-v2 and the bundled sentences.

    Example:
        >>> # res = slimforge.optimize(target="cpu")  # the demo: MiniLM, 2,884 bundled sentences
        >>> # res = slimforge.optimize("m.onnx", target="cpu", goals={"min_cosine": 0.995}, data="sentences.txt")
        >>> # res.goals_met, res.missed
    """
    if target is not None or goals is not None:
        from slimforge.auto import auto_optimize

        return auto_optimize(model, target=target or "cpu", goals=goals, data=data, output_dir=output_dir,
                             time_budget_s=time_budget_s, progress=progress, use_cache=use_cache,
                             eval_limit=min(eval_limit, 256), force=force)
    base = as_artifact(model)
    recipe = check_recipe(base, recipe or default_recipe(base, batch_sizes=tuple(batch_sizes), threads=threads))
    ds = as_data(data, base, default_text=True)
    with claim_output_dir(output_dir, force=force, inputs=[base.path]) as out_dir:
        return _run_recipe(base, ds, recipe, out_dir, eval_limit=eval_limit, spec=spec, progress=progress)


def _run_recipe(base: Artifact, ds: Dataset | None, recipe: Recipe, out_dir: Path, *, eval_limit: int,
                spec: BenchSpec, progress: ProgressFn | None) -> OptimizeResult:
    """The fixed recipe's work: steps (in scratch space), evaluation, the side-by-side timing; the artifact and its
    report are written to ``out_dir`` together at the end, so a failed or killed run leaves neither."""
    from slimforge.io.save import save
    from slimforge.report import build_report, variant_entry, write_report
    from slimforge.report.build import timing_section

    ctx = RunContext(progress=progress, threads=recipe.threads, calibration_data=ds)
    result = run_steps(base, recipe, ctx)
    quality_base, quality_result = _qualities(base, result, ds, recipe, eval_limit, ctx)
    ctx.report_progress("benchmark, side by side", 0, spec.max_rounds)
    (b_bench, r_bench), _ = measure_all(
        [(base, recipe.baseline_runtime), (result, recipe.runtime)], feeds_for(base, ds),
        batch_sizes=recipe.batch_sizes, spec=spec, threads=recipe.threads,
        on_round=lambda r, n: ctx.report_progress("benchmark, side by side", r, n))
    suffix = {Format.ONNX: ".onnx", Format.OPENVINO: ".xml"}.get(result.format)
    if suffix:  # the file is checked to reload with identical outputs; the artifact keeps its lineage and checks
        result = dataclasses.replace(result, path=save(result, out_dir / f"{base.name}-optimized{suffix}").path)
        r_bench.file = str(result.path)
    report = build_report(
        baseline=variant_entry(f"{_RUNTIME_NAMES.get(recipe.baseline_runtime, recipe.baseline_runtime)} FP32", base,
                               b_bench, quality_base),
        result=variant_entry(f"{_RUNTIME_NAMES.get(recipe.runtime, recipe.runtime)} "
                             f"{str(result.meta.get('precision', 'fp32')).upper()}", result, r_bench, quality_result),
        artifact=result, recipe=recipe.to_dict(), threads=recipe.threads, timing=timing_section([b_bench, r_bench]),
        data={"name": ds.name, "examples": len(ds), "evaluated": min(len(ds), eval_limit)} if ds else None)
    paths = write_report(report, out_dir)
    paths["recipe"] = write_text(out_dir / "recipe.yaml", recipe.to_yaml())
    paths["artifact"] = result.path  # type: ignore[assignment]
    return OptimizeResult(result, base, report, paths)


_RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def _qualities(base: Artifact, result: Artifact, ds: Dataset | None, recipe: Recipe, eval_limit: int,
               ctx: RunContext) -> tuple[dict[str, Metric], dict[str, Metric]]:
    if ds is None:
        return {}, {}
    from slimforge.evaluation.run import collect_outputs, quality_metrics

    ctx.report_progress("evaluate", 0, 2)
    ref_out, labels = collect_outputs(base, ds, runtime=recipe.baseline_runtime, limit=eval_limit)
    ctx.report_progress("evaluate", 1, 2)
    res_out, _ = collect_outputs(result, ds, runtime=recipe.runtime, limit=eval_limit)
    ctx.report_progress("evaluate", 2, 2)
    task = str(base.meta.get("task") or "generic")
    return quality_metrics(task, ref_out, ref_out, labels), quality_metrics(task, res_out, ref_out, labels)
