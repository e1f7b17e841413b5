"""Public API for the techniques that change a PyTorch model's architecture or weights by training:
``prune``, ``distill``, ``lowrank``, ``fuse``. Each takes its config object (``PruneConfig``, ``DistillConfig``,
``LowRankConfig``, ``FuseConfig``), or that config's fields as keywords, and returns a new artifact (the input is
never modified) carrying its checks and, unless ``check_speed`` is off, a ``no_slowdown`` check measured against
its input."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from slimforge.api import speed_check
from slimforge.bench import BenchSpec
from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config, with_fields
from slimforge.core.context import ProgressFn, RunContext
from slimforge.core.logs import quiet_libraries
from slimforge.errors import ConfigError, UnsupportedModelError
from slimforge.io.data import Dataset
from slimforge.io.inputs import ModelLike, as_artifact, as_data, feeds_for
from slimforge.io.torch_files import not_editable
from slimforge.plan.engine import apply_step

DataLike = str | Path | Dataset | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How a technique runs, apart from what it does: the speed check, where scratch goes, progress."""

    check_speed: bool = True
    batch_sizes: Sequence[int] = (1, 32)
    spec: BenchSpec = BenchSpec()
    workdir: str | Path | None = None
    progress: ProgressFn | None = None


def _split(fields: dict[str, Any]) -> tuple[RunOptions, dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(RunOptions)}
    run = RunOptions(**{k: v for k, v in fields.items() if k in names})
    return run, {k: v for k, v in fields.items() if k not in names}


def _run(art: Artifact, cfg: Config, *, data: DataLike, teacher: Artifact | None, run: RunOptions) -> Artifact:
    shown = art.path.name if art.path is not None else art.name
    if art.format is Format.TORCHSCRIPT:
        raise not_editable(shown, cfg.kind)
    if art.format is Format.TORCH_EXPORT:
        raise not_editable(shown, cfg.kind, why="this torch.export program could not be made an editable module: "
                           + str(art.meta.get("not_editable", "")))
    if art.format is not Format.TORCH:
        raise UnsupportedModelError(f"{cfg.kind} works on PyTorch models; {art.name} is {art.format.value}")
    ds = as_data(data, teacher or art, default_text=False) if data is not None else None
    ctx = RunContext(workdir=run.workdir, progress=run.progress, calibration_data=ds, baseline=teacher)
    out = apply_step(art, cfg, ctx)
    if run.check_speed:
        check, _ = speed_check(art, out, "torch", feeds_for(art, ds), batch_sizes=tuple(run.batch_sizes),
                               spec=run.spec)
        out = out.with_check(check)
    return out


@quiet_libraries()
def prune(model: ModelLike, config: Any = None, *, data: DataLike = None, finetune_data: DataLike = None,
          **fields: Any) -> Artifact:
    """Prune a PyTorch model with a ``PruneConfig`` (or its fields as keywords); structured pruning makes it
    physically smaller (parameters, FLOPs, latency reported). With data (``data``, or ``finetune_data``), structured
    pruning also refits the layers that read pruned features by least squares against the original model
    (``reconstruct``; no training: on MiniLM at 50% it takes the held-out embedding cosine from 0.51 to 0.77), and
    fine-tunes when ``finetune_epochs`` > 0. ``check_speed``, ``batch_sizes``, ``spec``, ``workdir`` and
    ``progress`` (``RunOptions``) say how it runs.

    Example:
        >>> import torch, slimforge
        >>> from slimforge.techniques.prune.torch_prune import PruneConfig
        >>> net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> art = slimforge.load(net, example_inputs=torch.randn(2, 32))
        >>> small = slimforge.prune(art, PruneConfig(ratio=0.5), check_speed=False)
        >>> small.meta["parameters_after"] < small.meta["parameters_before"]
        True
    """
    from slimforge.techniques.prune.torch_prune import PruneConfig

    run, rest = _split(fields)
    return _run(as_artifact(model), with_fields(config or PruneConfig, rest), data=data or finetune_data,
                teacher=None, run=run)


def derive_student(teacher: Artifact, layers: int) -> nn.Module:
    """A student made from the teacher by keeping ``layers`` evenly spaced blocks of its longest block list (the
    encoder layers of a transformer), with their weights."""
    module = copy.deepcopy(teacher.handle)
    lists = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        raise UnsupportedModelError(f"{teacher.name} has no list of repeated blocks to take layers from")
    name, blocks = max(lists, key=lambda t: len(t[1]))
    if not 1 <= layers < len(blocks):
        raise ConfigError(f"student layers must be in [1, {len(blocks) - 1}], got {layers}")
    keep = sorted({round(i * (len(blocks) - 1) / max(layers - 1, 1)) for i in range(layers)}) if layers > 1 else [0]
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in keep]))
    config = getattr(getattr(parent, "config", None) or getattr(module, "config", None), "num_hidden_layers", None)
    if config is not None:
        parent.config.num_hidden_layers = len(keep)  # type: ignore[union-attr]
    return module


def _student(t: Artifact, student: ModelLike | int | None) -> Artifact:
    if student is None:
        return t
    if not isinstance(student, (nn.Module, int)):  # an artifact or a path: it brings its own metadata
        return as_artifact(student)
    module = derive_student(t, student) if isinstance(student, int) else student
    s = as_artifact(module, example_inputs=dict(t.examples))  # the teacher's inputs, task and preprocessing
    return dataclasses.replace(s, meta={**t.meta, "name": f"{t.name}-student" if isinstance(student, int) else s.name})


@quiet_libraries()
def distill(teacher: ModelLike, student: ModelLike | int | None = None, config: Any = None, *, data: DataLike,
            **fields: Any) -> Artifact:
    """Distil ``teacher`` into ``student`` with a ``DistillConfig`` (or its fields as keywords). The student is a
    module or artifact, a number of layers to keep from the teacher, or None for the teacher's own architecture
    (e.g. to recover a pruned model, pass the pruned artifact as student). ``hidden_layers`` (module-name globs)
    adds hidden-state distillation; ``freeze`` keeps those weights fixed; ``augment`` adds token-level variants of
    each training sentence; ``device`` is ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``. ``RunOptions``
    fields say how it runs.

    Example:
        >>> # small = slimforge.distill(teacher_art, pruned_art, DistillConfig(epochs=5), data="sentences.txt")
        >>> # small.meta["distill"]["curve"]  # held-out cosine (or accuracy) per epoch
    """
    from slimforge.techniques.distill.torch_distill import DistillConfig

    run, rest = _split(fields)
    t = as_artifact(teacher)
    return _run(_student(t, student), with_fields(config or DistillConfig, rest), data=data, teacher=t, run=run)


@quiet_libraries()
def lowrank(model: ModelLike, config: Any = None, *, data: DataLike = None, **fields: Any) -> Artifact:
    """Factorize Linear/Conv2d layers by truncated SVD with a ``LowRankConfig`` (rank by ``ratio`` or ``energy``);
    parameters, cosine and latency are recorded. Fine-tune afterwards with ``distill(original, result, data=...)``.

    Example:
        >>> import torch, slimforge
        >>> net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        >>> small = slimforge.lowrank(slimforge.load(net, example_inputs=torch.randn(2, 256)), ratio=0.25,
        ...                           check_speed=False)
        >>> small.meta["parameters_after"] < small.meta["parameters_before"]
        True
    """
    from slimforge.techniques.lowrank import LowRankConfig

    run, rest = _split(fields)
    if rest.get("energy") is not None and "ratio" not in rest:
        rest["ratio"] = None  # energy instead of the default ratio
    return _run(as_artifact(model), with_fields(config or LowRankConfig, rest), data=data, teacher=None, run=run)


@quiet_libraries()
def fuse(model: ModelLike, config: Any = None, **fields: Any) -> Artifact:
    """Fold BatchNorm into the Conv/Linear before it; outputs verified to 1e-5.

    Example:
        >>> import torch, slimforge
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
        >>> slimforge.fuse(slimforge.load(net, example_inputs=torch.randn(1, 3, 8, 8)), check_speed=False
        ...                ).meta["fused_pairs"]
        1
    """
    from slimforge.techniques.fuse import FuseConfig

    run, rest = _split(fields)
    return _run(as_artifact(model), with_fields(config or FuseConfig, rest), data=None, teacher=None, run=run)
