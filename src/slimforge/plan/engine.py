"""The engine: the only place a step is applied. Every recipe (the fixed one, a user's YAML, each candidate of the
planner, the API's single techniques) runs here, through the step cache when one is given."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config
from slimforge.core.context import RunContext
from slimforge.core.logs import quiet_libraries
from slimforge.core.registry import apply, check_steps
from slimforge.errors import ConfigError, SlimforgeError
from slimforge.plan.cache import StepCache, model_key, step_key
from slimforge.plan.recipe import Recipe

log = logging.getLogger(__name__)


def apply_step(art: Artifact, step: Config, ctx: RunContext) -> Artifact:
    """Apply one step (dispatch on its config type and the artifact's format); the result checks itself. The
    libraries it drives keep their warnings and logs to slimforge's log (``core.logs``)."""
    with quiet_libraries():
        return apply(art, step, ctx)


def run_steps(art: Artifact, recipe: Recipe, ctx: RunContext, *, output: Path | None = None,
              cache: StepCache | None = None, key: str | None = None, target: str = "") -> Artifact:
    """Apply every step in order; the last one writes to ``output`` when given. With ``cache``, each prefix of
    steps is looked up by (parent key, step config, ``target``) before it is built, and kept after."""
    current, key = art, key or (model_key(art) if cache is not None else "")
    if ctx.baseline is None:
        ctx.baseline = art
    n = len(recipe.steps)
    for i, step in enumerate(recipe.steps):
        last = i == n - 1
        if cache is not None and not (last and output is not None):
            key = step_key(key, step, target)
            hit = cache.get(key)
            if hit is not None:
                current = hit
                continue
        ctx.report_progress(f"build: {step.kind}" if cache is not None else "recipe", i, n)
        current = apply_step(current, step, dataclasses.replace(ctx, output=output if last else None))
        if cache is not None and not (last and output is not None):
            current = cache.put(key, current)
    ctx.report_progress("recipe", n, n)
    if output is not None and current.path == output:
        from slimforge.io.sidecar import write_sidecar

        write_sidecar(current, output)  # metadata (preprocessing, lineage) travels with the file
    return current


def chain_key(art: Artifact, steps: tuple[Config, ...], target: str = "") -> str:
    """The cache key of the artifact that ``steps`` make from ``art``."""
    key = model_key(art)
    for step in steps:
        key = step_key(key, step, target)
    return key


def check_recipe(base: Artifact | Format, recipe: Recipe, *, name: str = "") -> Recipe:
    """Refuse, before any work, a recipe that cannot run on ``base``: a step with no handler for the format it
    would receive, unknown runtimes, or runtimes that cannot open what they are given. A recipe without a baseline
    runtime measures the baseline on the model's own runtime. Runs nothing; takes milliseconds.

    Example:
        >>> import torch, slimforge
        >>> from slimforge.convert.onnx import ExportConfig
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> check_recipe(art, Recipe(steps=(ExportConfig(),))).baseline_runtime
        'torch'
    """
    from slimforge.runtimes import get_runtime

    fmt = base.format if isinstance(base, Artifact) else base
    name = base.name if isinstance(base, Artifact) else (name or "the model")
    if not recipe.baseline_runtime:
        recipe = dataclasses.replace(recipe, baseline_runtime=_runtimes_for(fmt)[0] if _runtimes_for(fmt) else "")
    for role, runtime in (("runtime", recipe.runtime), ("baseline_runtime", recipe.baseline_runtime)):
        try:
            get_runtime(runtime)
        except ConfigError as exc:
            raise ConfigError(f"recipe {role}: {exc}") from None
    if fmt not in get_runtime(recipe.baseline_runtime).formats:
        raise ConfigError(f"recipe baseline_runtime {recipe.baseline_runtime} cannot run the {fmt.value} model "
                          f"{name}; set baseline_runtime to one of: {', '.join(_runtimes_for(fmt))}")
    try:
        final = check_steps(fmt, recipe.steps)
    except SlimforgeError as exc:  # a step with no handler for what it would receive: one line naming it
        raise ConfigError(f"recipe '{recipe.name}' cannot run on {name} ({fmt.value}): {exc}") from None
    if final not in get_runtime(recipe.runtime).formats:
        raise ConfigError(f"recipe runtime {recipe.runtime} cannot run the {final.value} model its steps make; "
                          f"set runtime to one of: {', '.join(_runtimes_for(final)) or 'none installed'}")
    return recipe


def _runtimes_for(fmt: object) -> list[str]:
    """Installed runtimes that open ``fmt``, the natural one first."""
    from slimforge.runtimes import available_runtimes, get_runtime

    order = ["torch", "onnxruntime", "openvino"]
    names = sorted(available_runtimes(), key=lambda n: order.index(n) if n in order else len(order))
    return [n for n in names if fmt in get_runtime(n).formats]
