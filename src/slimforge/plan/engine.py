"""Running a recipe's steps on an artifact."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from slimforge.core.artifact import Artifact
from slimforge.core.context import RunContext
from slimforge.core.registry import apply
from slimforge.plan.recipe import Recipe

log = logging.getLogger(__name__)


def run_steps(art: Artifact, recipe: Recipe, ctx: RunContext, *, output: Path | None = None) -> Artifact:
    """Apply every step in order; the last one writes to ``output`` when given. Each step checks itself."""
    current = art
    if ctx.baseline is None:
        ctx.baseline = art
    for i, step in enumerate(recipe.steps):
        step_ctx = dataclasses.replace(ctx, output=output if i == len(recipe.steps) - 1 else None)
        ctx.report_progress("recipe", i, len(recipe.steps))
        current = apply(current, step, step_ctx)
    ctx.report_progress("recipe", len(recipe.steps), len(recipe.steps))
    if output is not None and current.path == output:
        from slimforge.io.save import write_sidecar

        write_sidecar(current, output)  # metadata (preprocessing, lineage) travels with the file
    return current
