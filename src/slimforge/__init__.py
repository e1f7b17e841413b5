"""slimforge: make trained neural networks smaller and faster, verified and measured on the target hardware.

Example:
    >>> import torch, slimforge
    >>> art = slimforge.load(torch.nn.Linear(8, 4), example_inputs=torch.randn(1, 8))
    >>> art.format.value
    'torch'
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from slimforge.version import __version__

logging.getLogger("slimforge").addHandler(logging.NullHandler())

# Names are imported on first use (PEP 562), so that ``import slimforge`` and the CLI start fast.
_LAZY = {
    "OptimizeResult": "slimforge.api", "benchmark": "slimforge.api", "evaluate": "slimforge.api",
    "export": "slimforge.api", "info": "slimforge.api", "optimize": "slimforge.api", "quantize": "slimforge.api",
    "profile": "slimforge.api", "benchmark_devices": "slimforge.api", "search_architecture": "slimforge.nas.run",
    "AutoResult": "slimforge.auto", "Goals": "slimforge.auto", "Target": "slimforge.auto",
    "auto_optimize": "slimforge.auto", "auto_optimize_for_deployment": "slimforge.auto",
    "load_optimized": "slimforge.auto", "BenchResult": "slimforge.bench", "BenchSpec": "slimforge.bench",
    "Timing": "slimforge.bench", "distill": "slimforge.compress", "fuse": "slimforge.compress",
    "lowrank": "slimforge.compress", "prune": "slimforge.compress", "Artifact": "slimforge.core.artifact",
    "Check": "slimforge.core.artifact", "Format": "slimforge.core.artifact", "IOSpec": "slimforge.core.artifact",
    "Step": "slimforge.core.artifact", "TensorSpec": "slimforge.core.artifact", "Config": "slimforge.core.config",
    "RunContext": "slimforge.core.context", "load_data": "slimforge.io.data", "load": "slimforge.io.models",
    "save": "slimforge.io.save", "Recipe": "slimforge.plan.recipe", "open_session": "slimforge.runtimes",
    "tune_threads": "slimforge.bench.threads",
    **{name: "slimforge.errors" for name in (
        "ConfigError", "DataError", "InputError", "MissingDependencyError", "ModelLoadError", "SlimforgeError",
        "TechniqueFailed", "UnsupportedModelError", "VerificationError")},
}

def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slimforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "Artifact",
    "AutoResult",
    "Goals",
    "Target",

    "auto_optimize_for_deployment",
    "load_optimized",
    "BenchResult",
    "BenchSpec",
    "Check",
    "Config",
    "ConfigError",
    "DataError",
    "Format",
    "IOSpec",
    "InputError",
    "MissingDependencyError",
    "ModelLoadError",
    "OptimizeResult",
    "Recipe",
    "RunContext",
    "SlimforgeError",
    "Step",
    "TechniqueFailed",
    "TensorSpec",
    "Timing",
    "UnsupportedModelError",
    "VerificationError",
    "__version__",
    "benchmark",
    "profile",
    "benchmark_devices",
    "distill",
    "evaluate",
    "export",
    "fuse",
    "info",
    "load",
    "load_data",
    "lowrank",
    "open_session",
    "optimize",
    "prune",
    "quantize",
    "save",
    "search_architecture",
    "tune_threads",
]
