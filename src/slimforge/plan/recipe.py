"""A recipe: ordered technique steps plus where to measure the result. Loadable from and savable to YAML/JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config
from slimforge.errors import ConfigError

RECIPE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Steps to apply in order, and how to measure the result against the baseline.

    Example:
        >>> from slimforge.convert.onnx import ExportConfig
        >>> r = Recipe(steps=(ExportConfig(),))
        >>> Recipe.from_dict(r.to_dict()) == r
        True
    """

    steps: tuple[Config, ...]
    runtime: str = "onnxruntime"
    baseline_runtime: str = ""  # "": the model's own runtime
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int | None = None
    name: str = "default"
    source: str | None = None  # the model it was made for: an absolute path, or one relative to the recipe file
    data: str | None = None  # the calibration data it was made with: a path (as source), or "synthesized"

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return {"version": RECIPE_VERSION, "name": self.name, "runtime": self.runtime,
                "baseline_runtime": self.baseline_runtime, "batch_sizes": list(self.batch_sizes),
                "threads": self.threads, **({"source": self.source} if self.source else {}),
                **({"data": self.data} if self.data else {}),
                "steps": [s.to_dict() for s in self.steps]}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Recipe:
        if not isinstance(data, dict) or "steps" not in data:
            raise ConfigError("a recipe is a mapping with a 'steps' list")
        if int(data.get("version", RECIPE_VERSION)) > RECIPE_VERSION:
            raise ConfigError(f"recipe version {data['version']} is newer than this slimforge supports "
                              f"({RECIPE_VERSION}); upgrade slimforge")
        return Recipe(steps=tuple(Config.from_dict(s) for s in data["steps"]),
                      runtime=str(data.get("runtime", "onnxruntime")),
                      baseline_runtime=str(data.get("baseline_runtime") or ""),
                      batch_sizes=tuple(int(b) for b in data.get("batch_sizes", (1, 32))),
                      threads=data.get("threads"), name=str(data.get("name", "default")),
                      source=data.get("source"), data=data.get("data"))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @staticmethod
    def load(path: str | Path) -> Recipe:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML/JSON ({getattr(exc, 'problem', None) or exc}{where})") \
                from None
        recipe = Recipe.from_dict(data)
        return dataclasses.replace(recipe, source=_beside(recipe.source, path),
                                   data=recipe.data if recipe.data == "synthesized" else _beside(recipe.data, path))


def _beside(value: str | None, recipe_file: Path) -> str | None:
    """A relative path in a recipe is relative to the recipe's folder (so a recipe travels with its model); an old
    recipe whose path only exists relative to the working folder still works."""
    if not value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    near = recipe_file.resolve().parent / p
    return str(near) if near.exists() or not p.exists() else str(p.resolve())


def default_recipe(art: Artifact, *, batch_sizes: tuple[int, ...] = (1, 32), threads: int | None = None) -> Recipe:
    """The fixed recipe: export -> verify -> graph-optimise -> dynamic INT8 (per-channel) -> verify."""
    from slimforge.convert.onnx import ExportConfig
    from slimforge.convert.optimize import GraphOptConfig
    from slimforge.techniques.quantize.onnx_dynamic import DynamicQuantConfig

    steps: list[Config] = [] if art.format in (Format.ONNX, Format.OPENVINO) else [ExportConfig()]
    steps += [GraphOptConfig(), DynamicQuantConfig(per_channel=True)]
    baseline = "onnxruntime" if art.format is Format.ONNX else "torch"
    return Recipe(steps=tuple(steps), baseline_runtime=baseline, batch_sizes=batch_sizes, threads=threads)
