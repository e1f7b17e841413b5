"""slimforge: make trained neural networks smaller and faster, verified and measured on the target hardware.

Example:
    >>> import torch, slimforge
    >>> art = slimforge.load(torch.nn.Linear(8, 4), example_inputs=torch.randn(1, 8))
    >>> art.format.value
    'torch'
"""

from __future__ import annotations

import logging

from slimforge.api import OptimizeResult, benchmark, evaluate, export, info, optimize, quantize
from slimforge.auto import AutoResult, Goals, Target, auto_optimize_for_deployment, load_optimized
from slimforge.bench.timing import BenchResult, BenchSpec, Timing
from slimforge.compress import distill, fuse, lowrank, prune
from slimforge.core.artifact import Artifact, Check, Format, IOSpec, Step, TensorSpec
from slimforge.core.config import Config
from slimforge.core.context import RunContext
from slimforge.errors import (
    ConfigError,
    DataError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    SlimforgeError,
    TechniqueFailed,
    UnsupportedModelError,
    VerificationError,
)
from slimforge.io.data import load_data
from slimforge.io.models import load
from slimforge.io.save import save
from slimforge.plan.recipe import Recipe
from slimforge.runtimes import open_session

__version__ = "0.1.0"

logging.getLogger("slimforge").addHandler(logging.NullHandler())

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
]
