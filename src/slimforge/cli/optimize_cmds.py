"""CLI commands for the auto-optimizer and recipes: ``optimize`` and ``run`` (registered on the main app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from slimforge.cli.app import app
from slimforge.cli.common import (Arch, ArchKwargs, Force, InputShape, ModelArg, Preprocess, Task, Weights, load_model,
                                  model_source, parse_batches, parse_duration, with_overrides)
from slimforge.cli.render import console, err_console, print_checks, print_comparison, print_search
from slimforge.errors import ConfigError


@app.command()
def optimize(model: ModelArg = None,
             output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Output folder.")] = Path(
                 "slimforge-out"),
             data: Annotated[Optional[Path], typer.Option(help="Calibration/evaluation (and training) data.")] = None,
             target: Annotated[Optional[str], typer.Option(
                 help="Search for the best artifact on cpu | server | edge | mobile | gpu | PRESET.yaml. Without "
                      "it (and without goals) the fixed recipe runs: export, graph passes, dynamic INT8.")] = None,
             max_latency_ms: Annotated[Optional[str], typer.Option(
                 help="Latency goal at the first --batch: ms, or N% of the baseline.")] = None,
             latency_stat: Annotated[str, typer.Option(help="p50 | p95 | p99 for the latency goal.")] = "p50",
             max_memory_mb: Annotated[Optional[str], typer.Option(help="Peak memory goal: MB or N%.")] = None,
             max_size_mb: Annotated[Optional[str], typer.Option(help="Size on disk goal: MB or N%.")] = None,
             min_accuracy: Annotated[Optional[float], typer.Option(help="Accuracy goal, % (labelled data).")] = None,
             max_accuracy_drop: Annotated[Optional[str], typer.Option(
                 help="Quality budget: points (or cosine units without labels), or N% of the baseline.")] = None,
             min_cosine: Annotated[Optional[float], typer.Option(help="Output cosine to the baseline.")] = None,
             min_speedup: Annotated[Optional[float], typer.Option(help="Speedup over the baseline.")] = None,
             time_budget: Annotated[str, typer.Option(help="Search time budget: 900, 90s, 15m, 1h.")] = "15m",
             cache: Annotated[bool, typer.Option(help="Reuse cached steps, measurements and results.")] = True,
             batch: Annotated[Optional[str], typer.Option(
                 help="Batch sizes to measure (the first is the latency goal's). Default: the target's.")] = None,
             threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
             recipe: Annotated[Optional[Path], typer.Option(help="A recipe YAML to run instead of the default.")] = None,
             input_shape: InputShape = None, task: Task = None, preprocess: Preprocess = None, force: Force = False,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe and stop.")] = False,
             arch: Arch = None, weights: Weights = None, arch_kwargs: ArchKwargs = None) -> None:
    """Optimize a model. With --target or any goal: search every technique and runtime for the best artifact that
    meets the goals (exit code 0 when all are met, 3 when not; the best effort is saved either way)."""
    from slimforge.core.artifact import Format
    from slimforge.io.models import default_model_path, format_of
    from slimforge.plan.engine import check_recipe
    from slimforge.plan.recipe import Recipe, default_recipe

    goal_args = {"max_latency_ms": max_latency_ms, "max_memory_mb": max_memory_mb, "max_size_mb": max_size_mb,
                 "min_accuracy": min_accuracy, "max_accuracy_drop": max_accuracy_drop, "min_cosine": min_cosine,
                 "min_speedup": min_speedup}
    goal_args = {k: v for k, v in goal_args.items() if v is not None}
    given = Recipe.load(recipe) if recipe else None
    source = model_source(model, weights)
    if given is not None:  # refused in milliseconds, before the model is even loaded
        check_recipe(Format.TORCH if arch else format_of(source or default_model_path()), given,
                     name=source or "the bundled model")
    art = with_overrides(load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs), task,
                         preprocess)
    if source is None and data is None:  # the bundled model: evaluate, calibrate and time on the bundled sentences
        from slimforge.io.data import bundled_sentences_path

        data = bundled_sentences_path()
    if target is not None or goal_args:
        _auto(art, target or "cpu", goal_args, latency_stat, batch, threads, data, output_dir,
              parse_duration(time_budget), cache, dry_run, force)
        return
    the_recipe = given or default_recipe(art, batch_sizes=parse_batches(batch or "1,32"), threads=threads)
    if dry_run:
        console.print(the_recipe.to_yaml())
        return
    _run_recipe(art, data, output_dir, the_recipe, force)


def _run_recipe(art: Any, data: Any, output_dir: Path, recipe: Any, force: bool) -> None:
    """A recipe's steps, then baseline and result timed side by side, and the report (``optimize``, ``run``)."""
    from slimforge.api import optimize as api_optimize
    from slimforge.cli.progress import progress_bars

    with progress_bars(err_console) as progress:
        res = api_optimize(art, data=data, output_dir=output_dir, recipe=recipe, progress=progress, force=force)
    print_checks(res.artifact)
    print_comparison(res.report)
    console.print(f"artifact: {res.paths['artifact']}")
    console.print(f"report:   {res.paths['html']}  (self-contained; also report.json, report.csv, *.png)")


def _auto(art: Any, target: str, goal_args: dict[str, Any], latency_stat: str, batch: str | None,
          threads: int | None, data: Path | None, output_dir: Path, budget_s: float, cache: bool, dry_run: bool,
          force: bool) -> None:
    import dataclasses

    from slimforge.auto import Goals, auto_optimize, get_target
    from slimforge.cli.progress import progress_bars

    tgt = get_target(target)
    if batch is not None:
        batches = parse_batches(batch)
        tgt = dataclasses.replace(tgt, batch_sizes=batches)
        goal_args["batch"] = batches[0]
    if threads is not None:
        tgt = dataclasses.replace(tgt, threads=threads)
    goals = Goals.from_mapping({**goal_args, "latency_stat": latency_stat})
    if dry_run:
        console.print_json(json.dumps({"target": tgt.to_dict(), "goals": goals.merged(tgt.goals).to_dict(),
                                       "time_budget_s": budget_s}))
        return
    with progress_bars(err_console) as progress:
        res = auto_optimize(art, target=tgt, goals=goals, data=data, output_dir=output_dir, time_budget_s=budget_s,
                            progress=progress, use_cache=cache, force=force)
    print_search(res.report, from_cache=res.from_cache)
    if "artifact" in res.paths:
        console.print(f"artifact: {res.paths['artifact']}")
    if res.report.get("result") is not None:
        console.print(f"recipe:   {res.paths.get('recipe')}  (re-run: slimforge run {res.paths.get('recipe')})")
    else:
        console.print(f"recipe:   {res.paths.get('recipe')}  (no steps: nothing beat the original on this target)")
    console.print(f"report:   {res.paths.get('html')}  (self-contained; also report.json, report.csv, *.png)")
    if not res.goals_met:
        err_console.print("goals not met: " + "; ".join(res.missed))
        raise typer.Exit(3)


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="A recipe YAML (e.g. the recipe.yaml that optimize wrote).")],
        model: Annotated[Optional[str], typer.Argument(help="Model (default: the recipe's source).")] = None,
        output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Output folder.")] = Path(
            "slimforge-out/run"),
        data: Annotated[Optional[Path], typer.Option(help="Calibration/evaluation data.")] = None,
        force: Force = False) -> None:
    """Re-run a recipe: its steps, then the benchmark and report of baseline vs result."""
    from slimforge.io.models import format_of
    from slimforge.plan.engine import check_recipe
    from slimforge.plan.recipe import Recipe

    the_recipe = Recipe.load(recipe)
    source = model or the_recipe.source
    if source is None:
        raise ConfigError(f"{recipe}: the recipe names no source model; give one: slimforge run {recipe} MODEL")
    if not the_recipe.steps:
        raise ConfigError(f"{recipe}: the recipe has no steps (its search found no gain on its target)")
    check_recipe(format_of(source), the_recipe, name=str(source))  # before any work: fails in milliseconds
    art = load_model(source, None)
    dataset: Any = data
    if dataset is None and the_recipe.data == "synthesized":  # the search calibrated on synthesised inputs
        from slimforge.io.inputs import SyntheticData

        dataset = SyntheticData(art, n=64, seed=1)
    elif dataset is None and the_recipe.data:
        dataset = Path(the_recipe.data)
    _run_recipe(art, dataset, output_dir, the_recipe, force)
