"""Auto-optimization for a deployment target under latency, memory, size and accuracy goals.

``auto_optimize`` searches (see ``search``), saves the best artifact, the recipe that re-makes it
(``slimforge run recipe.yaml``) and a report of every candidate with the Pareto plot, and keeps the result in a
registry of optimized models keyed by everything that went into it, so that asking again with unchanged inputs
(``load_optimized``, or the same ``optimize``) returns at once.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from slimforge.auto.goals import Goals
from slimforge.auto.search import FAST_SPEC, search
from slimforge.auto.targets import PRESETS, Target, get_target
from slimforge.bench import BenchSpec
from slimforge.core.artifact import Artifact, Format
from slimforge.core.context import ProgressFn
from slimforge.core.logs import quiet_libraries
from slimforge.core.outputs import atomic_path, claim_output_dir, write_text
from slimforge.errors import ConfigError, SlimforgeError
from slimforge.io.inputs import as_artifact, as_data
from slimforge.plan.cache import CACHE_VERSION, cache_root, data_fingerprint, digest, fingerprint, touch

log = logging.getLogger(__name__)

__all__ = ["AutoResult", "Goals", "PRESETS", "Target", "auto_optimize", "auto_optimize_for_deployment",
           "get_target", "load_optimized"]

_SUFFIX = {Format.ONNX: ".onnx", Format.OPENVINO: ".xml", Format.TORCHSCRIPT: ".pt", Format.TORCH: ".pt"}


@dataclass
class AutoResult:
    """The best artifact, whether every goal was met, the goals with their margins, the report and the files."""

    artifact: Artifact
    goals_met: bool
    goal_results: list[dict[str, Any]]
    report: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    from_cache: bool = False
    seconds: float = 0.0

    @property
    def missed(self) -> list[str]:
        return [g["text"] for g in self.goal_results if not g["met"]]


def _request_key(model: Artifact, target: Target, goals: Goals, data: Any, eval_limit: int,
                 time_budget_s: float) -> str:
    from slimforge.version import __version__

    return digest(fingerprint(model), target.to_dict(), goals.to_dict(), data_fingerprint(data), eval_limit,
                  time_budget_s, CACHE_VERSION, __version__)


@quiet_libraries()
def auto_optimize(model: Any = None, *, target: str | Path | Target = "cpu",
                  goals: Goals | Mapping[str, Any] | None = None, data: Any = None,
                  output_dir: str | Path = "slimforge-out", time_budget_s: float = 900.0, eval_limit: int = 256,
                  spec: BenchSpec = FAST_SPEC, progress: ProgressFn | None = None,
                  use_cache: bool = True, force: bool = False) -> AutoResult:
    """Search for the best artifact for ``target`` under ``goals``.

    Example:
        >>> # res = auto_optimize("model.onnx", target="cpu", goals={"max_latency_ms": 10, "min_cosine": 0.995})
        >>> # res.goals_met, res.missed, res.paths["artifact"]
    """
    t0 = time.perf_counter()
    base = as_artifact(model)
    ds = as_data(data, base, default_text=model is None)  # the bundled model: the bundled sentences
    tgt = get_target(target)
    g = goals if isinstance(goals, Goals) else Goals.from_mapping(dict(goals or {}))
    if time_budget_s <= 0:
        raise ConfigError(f"the time budget must be positive, got {time_budget_s} s")
    with claim_output_dir(output_dir, force=force, inputs=[base.path]) as out_dir:
        result = _optimize_into(out_dir, base, ds, data, tgt, g, eval_limit=eval_limit,
                                time_budget_s=time_budget_s, spec=spec, progress=progress, use_cache=use_cache, t0=t0)
    if use_cache:  # the size cap ($SLIMFORGE_CACHE_MAX_GB): least recently used entries go
        from slimforge.plan.cache_admin import evict

        gone = evict()
        if gone:
            log.info("cache over its cap: removed %d least recently used entries (%.1f MB)", len(gone),
                     sum(e.size_bytes for e in gone) / 1e6)
    return result


def _optimize_into(out_dir: Path, base: Artifact, ds: Any, data: Any, tgt: Target, g: Goals, *, eval_limit: int,
                   time_budget_s: float, spec: BenchSpec, progress: ProgressFn | None, use_cache: bool,
                   t0: float) -> AutoResult:
    key = _request_key(base, tgt, g, ds, eval_limit, time_budget_s)
    registry = cache_root() / "optimized" / key
    if use_cache and (registry / "complete").is_file():
        touch(registry)
        return _from_registry(registry, out_dir, t0)
    res = search(base, target=tgt, goals=g, data=ds, time_budget_s=time_budget_s, eval_limit=eval_limit, spec=spec,
                 progress=progress, use_cache=use_cache)
    from slimforge.auto import report as rep
    from slimforge.plan.recipe import Recipe
    from slimforge.report import write_report

    art_path: Path | None = None
    best = res.artifact
    from slimforge.io.save import save

    suffix = ".pt2" if best.meta.get("device") == "cuda" else _SUFFIX.get(best.format, ".pt")  # GPU: an engine
    art_path = out_dir / f"{base.name}-{res.target.name}{suffix}"
    cacheable = True
    profiles = _engine_profiles(res) if suffix == ".pt2" and res.best is not None else []
    try:  # the winner, or (no gain on this target) the original model as the best effort
        best = _save_engine(res, best, art_path, profiles) if profiles else save(best, art_path)
    except SlimforgeError as exc:
        if res.best is not None and suffix == ".pt2" and base.format is Format.TORCH:
            res.notes.append(f"the GPU engine could not be built ({exc}); written instead: the original model as a "
                             "program with the winner's steps, which `slimforge serve` re-applies on the GPU when "
                             "it loads the file (`slimforge run recipe.yaml` does the same)")
            art_path = out_dir / f"{base.name}-{res.target.name}-weights.pt2"
            steps = [s.to_dict() for s in res.best.candidate.steps]
            save(dataclasses.replace(base, meta={**base.meta, "reapply_on_load": steps}), art_path)
            # the result stays the in-memory winner on the GPU
            cacheable = False  # the file is not the winner: a cache hit must not hand back the original
        elif res.best is None and suffix == ".pt2" and base.format is Format.TORCH:
            res.notes.append(f"the FP32 engine could not be built ({exc}); the original model is written as it is")
            art_path = out_dir / f"{base.name}-{res.target.name}.pt"
            best = save(base, art_path)
        elif res.best is not None:
            raise
        else:
            res.notes.append(f"the original model could not be saved as a file ({exc}); nothing written")
            art_path = None
    recipe = Recipe(steps=res.best.candidate.steps if res.best else (),
                    runtime=res.best.candidate.runtime if res.best else res.baseline_measurement["runtime"],
                    baseline_runtime=res.baseline_measurement["runtime"],
                    batch_sizes=tuple(sorted(res.best.latency)) if res.best and res.best.latency else
                    tuple(res.target.batch_sizes),
                    threads=res.target.threads, name=f"auto-{res.target.name}",
                    source=_source_of(base),
                    data=str(Path(data).resolve()) if isinstance(data, (str, Path)) else
                    ("synthesized" if data is None and ds is None else None))
    write_text(out_dir / "recipe.yaml", recipe.to_yaml())
    report = rep.build(res, recipe=recipe.to_dict(), artifact_path=art_path,
                       data_name=getattr(ds, "name", None), profiles=_profiles(res, best))
    paths = write_report(report, out_dir)
    paths["recipe"] = out_dir / "recipe.yaml"
    if art_path is not None:
        paths["artifact"] = art_path
    result = AutoResult(best, res.goals_met, report["goal_results"], report, paths, False,
                        time.perf_counter() - t0)
    if use_cache and cacheable:
        _to_registry(registry, result)
    return result


def _save_engine(res: Any, best: Artifact, path: Path, profiles: list[Any]) -> Artifact:
    """The engine with its batch ranges; if one range's variant cannot be compiled, the chosen one for all."""
    from slimforge.io.save import save

    try:
        saved = save(best, path, profiles=profiles)
        res.notes.append("the engine runs " + "; ".join(f"batches {r['lo']}-{r['hi']} as {r['name']}"
                                                         for r in res.engine_profiles)
                         + " (each measured faster there than the others, beyond the noise)")
        return saved
    except SlimforgeError as exc:
        res.notes.append(f"the engine's batch ranges could not be built ({exc}); the chosen variant runs every batch "
                         "size")
        res.engine_profiles = []
        return save(best, path)


def _engine_profiles(res: Any) -> list[Any]:
    """A GPU engine's batch ranges, where another verified variant is measurably faster than the chosen one at some
    measured batch size (``select.batch_profiles``); noted in the result."""
    from slimforge.auto.select import batch_profiles
    from slimforge.io.engine import MAX_BATCH, Profile

    ranges = batch_profiles(res.best, res.evaluated, MAX_BATCH)
    res.engine_profiles = [{"lo": lo, "hi": hi, "name": e.candidate.name} for lo, hi, e in ranges]
    return [Profile(lo, hi, e.artifact) for lo, hi, e in ranges]


def _profiles(res: Any, best: Artifact) -> dict[str, Any] | None:
    """Where the time goes in the baseline and in the winner, side by side (``bench.profiler``, at the goal's batch
    size): each one's blocks and top layers. CPU targets only: a compiled GPU model runs as one graph, whose module
    boundaries the profiler cannot see."""
    if res.best is None or res.target.device != "cpu":
        return None
    from slimforge.bench.profiler import profile_model

    out = {}
    for key, art, runtime in (("baseline", res.baseline, res.baseline_measurement["runtime"]),
                              ("chosen", best, res.best.candidate.runtime)):
        try:
            p = profile_model(art, runtime, batch=res.goal_batch, runs=10, threads=res.target.threads)
        except Exception as exc:  # noqa: BLE001 - an optional section never costs the user the result
            res.notes.append(f"the {key}'s profile could not be taken: {type(exc).__name__}: "
                             f"{(str(exc).splitlines() or [''])[0][:200]}")
            return None
        doc = p.to_dict()
        out[key] = {k: doc[k] for k in ("runtime", "batch", "end_to_end_ms", "total_self_ms", "coverage", "flops",
                                        "blocks", "bottlenecks", "bottleneck_blocks")}
        out[key]["top_layers"] = doc["layers"][:8]
    return out


def _source_of(art: Artifact) -> str | None:
    if art.source_id.startswith(("file:", "hf:")) and art.path is not None:
        return str(Path(art.path).resolve())  # absolute: the recipe re-runs from any folder
    return None


def _to_registry(folder: Path, res: AutoResult) -> None:
    """Keep the result (artifact files, report, recipe) under the request's key; 'complete' is written last."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for kind, p in res.paths.items():
        if p is None or not Path(p).exists():
            continue
        for f in _companions(Path(p)):
            shutil.copy2(f, tmp / f.name)
        files[kind] = Path(p).name
    (tmp / "result.json").write_text(json.dumps({"files": files, "goals_met": res.goals_met,
                                                 "goal_results": res.goal_results}, default=str))
    (tmp / "complete").write_text("1")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _companions(p: Path) -> list[Path]:
    """A model file and what travels with it (OpenVINO .bin, ONNX external data, the sidecar)."""
    out = [p]
    for extra in (p.with_suffix(".bin"), p.with_name(p.name + ".slimforge.json"), p.with_name(p.name + ".data"),
                  p.with_name(p.stem + ".onnx.data")):
        if extra.exists() and extra not in out:
            out.append(extra)
    return out


def _from_registry(folder: Path, out_dir: Path, t0: float) -> AutoResult:
    from slimforge.io.models import load

    doc = json.loads((folder / "result.json").read_text())
    paths: dict[str, Path] = {}
    for f in folder.iterdir():
        if f.name not in ("result.json", "complete"):
            with atomic_path(out_dir / f.name) as tmp:
                shutil.copy2(f, tmp)
    for kind, name in doc["files"].items():
        paths[kind] = out_dir / name
    report = json.loads((out_dir / doc["files"]["json"]).read_text()) if "json" in doc["files"] else {}
    art = load(paths["artifact"]) if "artifact" in paths else None
    if art is None:
        raise ConfigError(f"{folder}: the cached result has no artifact; delete the folder to search again")
    return AutoResult(art, doc["goals_met"], doc["goal_results"], report, paths, True, time.perf_counter() - t0)


def load_optimized(name: str | Path | Artifact | None = None, optimization: str = "auto", *,
                   target: str | Path | Target = "cpu", goals: Mapping[str, Any] | Goals | None = None,
                   data: Any = None, output_dir: str | Path | None = None, time_budget_s: float = 900.0,
                   **kw: Any) -> Artifact:
    """The optimized artifact for a model: from the registry when nothing that went into it changed (the model
    files, the target, the goals, the data), else optimized now and kept there.

    Example:
        >>> # art = slimforge.load_optimized("models/resnet.onnx", target="edge", data="images/")
    """
    if optimization != "auto":
        raise ConfigError(f"optimization must be 'auto' (the searched result), got {optimization!r}")
    out = Path(output_dir) if output_dir else cache_root() / "outputs" / digest(str(name), str(target))
    return auto_optimize(name, target=target, goals=goals, data=data, output_dir=out, time_budget_s=time_budget_s,
                         **kw).artifact


def auto_optimize_for_deployment(target_platform: str, model_name: Any,
                                 performance_threshold: Mapping[str, Any] | None = None, *,
                                 example_inputs: Any = None, **kw: Any) -> AutoResult:
    """The seed's shape: ``performance_threshold={"inference_time": ms, "memory_usage": MB, "accuracy": 0..1}``.
    ``model_name`` is a path, an artifact or an ``nn.Module`` (then with ``example_inputs``).

    Example:
        >>> # auto_optimize_for_deployment("cpu", "model.onnx", {"inference_time": 10, "accuracy": 0.98})
        >>> # auto_optimize_for_deployment("edge", net, {"inference_time": 10},
        >>> #                              example_inputs=torch.randn(1, 3, 32, 32))
    """
    model = model_name if example_inputs is None else as_artifact(model_name, example_inputs=example_inputs)
    return auto_optimize(model, target=target_platform, goals=Goals.from_mapping(performance_threshold), **kw)
