"""Public API for the techniques that change a PyTorch model's architecture or weights by training:
``prune``, ``distill``, ``lowrank``, ``fuse``. Each returns a new artifact (the input is never modified) carrying
its checks and, unless ``check_speed`` is off, a ``no_slowdown`` check measured against its input."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Sequence

from torch import nn

from slimforge.api import ModelLike, _as_artifact, _as_data, feeds_for, speed_check
from slimforge.bench.timing import BenchSpec
from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config
from slimforge.core.context import ProgressFn, RunContext
from slimforge.core.registry import apply
from slimforge.errors import ConfigError, UnsupportedModelError
from slimforge.io.data import Dataset

DataLike = str | Path | Dataset | None


def _run(art: Artifact, cfg: Config, *, data: DataLike, teacher: Artifact | None, check_speed: bool,
         batch_sizes: Sequence[int], spec: BenchSpec, workdir: str | Path | None,
         progress: ProgressFn | None) -> Artifact:
    if art.format is not Format.TORCH:
        raise UnsupportedModelError(f"{cfg.kind} works on PyTorch models; {art.name} is {art.format.value}")
    ds = _as_data(data, teacher or art, default_text=False) if data is not None else None
    ctx = RunContext(workdir=workdir, progress=progress,
                     calibration_data=ds, baseline=teacher)
    out = apply(art, cfg, ctx)
    if check_speed:
        out = out.with_check(speed_check(art, out, "torch", feeds_for(art, ds), batch_sizes=tuple(batch_sizes),
                                         spec=spec))
    return out


def prune(model: ModelLike, *, ratio: float = 0.5, structured: bool = True, criterion: str = "l1",
          global_pruning: bool = False, round_to: int = 8, iterative_steps: int = 1,
          finetune_data: DataLike = None, finetune_epochs: int = 0, lr: float = 1e-3, ignore: Sequence[str] = (),
          reconstruct: bool = True, check_speed: bool = True, batch_sizes: Sequence[int] = (1, 32),
          spec: BenchSpec = BenchSpec(), workdir: str | Path | None = None,
          progress: ProgressFn | None = None) -> Artifact:
    """Prune a PyTorch model; structured pruning makes it physically smaller (parameters, FLOPs, latency reported).
    With ``finetune_data``, structured pruning also refits the layers that read pruned features by least squares
    against the original model (``reconstruct``; no training: on MiniLM at 50% it takes the held-out embedding cosine
    from 0.51 to 0.77), and fine-tunes when ``finetune_epochs`` > 0.

    Example:
        >>> import torch, slimforge
        >>> net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> art = slimforge.load(net, example_inputs=torch.randn(2, 32))
        >>> small = slimforge.prune(art, ratio=0.5, check_speed=False)
        >>> small.meta["parameters_after"] < small.meta["parameters_before"]
        True
    """
    from slimforge.techniques.prune.torch_prune import PruneConfig

    cfg = PruneConfig(ratio=ratio, structured=structured, criterion=criterion, global_pruning=global_pruning,
                      round_to=round_to, iterative_steps=iterative_steps, finetune_epochs=finetune_epochs, lr=lr,
                      ignore=tuple(ignore), reconstruct=reconstruct)
    return _run(_as_artifact(model), cfg, data=finetune_data, teacher=None, check_speed=check_speed,
                batch_sizes=batch_sizes, spec=spec, workdir=workdir, progress=progress)


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


def distill(teacher: ModelLike, student: ModelLike | int | None = None, *, data: DataLike, mode: str = "auto",
            temperature: float = 4.0, alpha: float = 0.7, epochs: int = 10, lr: float = 1e-3, batch_size: int = 32,
            num_samples: int = 4096, heldout: float = 0.2, patience: int | None = None,
            hidden_layers: Sequence[str] = (), hidden_weight: float = 1.0, freeze: Sequence[str] = (),
            augment: int = 0, device: str = "auto", checkpoint_dir: str | None = None, check_speed: bool = True,
            batch_sizes: Sequence[int] = (1, 32), spec: BenchSpec = BenchSpec(), workdir: str | Path | None = None,
            progress: ProgressFn | None = None) -> Artifact:
    """Distil ``teacher`` into ``student``: a module or artifact, a number of layers to keep from the teacher, or
    None for the teacher's own architecture (e.g. to recover a pruned model, pass the pruned artifact as student).
    ``hidden_layers`` (module-name globs, e.g. ``"*.encoder.layer.*"``) adds hidden-state distillation: the student's
    outputs of those modules match the teacher's (masked MSE), which gives encoders far more signal per example.
    ``freeze`` (module-name globs) keeps those weights fixed, e.g. ``"*embeddings*"`` so that tokens the data never
    shows stay where the teacher had them. ``augment`` adds that many token-level variants of each training sentence
    (labelled by the teacher); ``device`` is ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``.

    Example:
        >>> # small = slimforge.distill(teacher_art, pruned_art, data="sentences.txt", epochs=5)
        >>> # small.meta["distill"]["curve"]  # held-out cosine (or accuracy) per epoch
    """
    from slimforge.techniques.distill.torch_distill import DistillConfig

    t = _as_artifact(teacher)
    if student is None:
        s = t
    elif not isinstance(student, (nn.Module, int)):  # an artifact or a path: it brings its own metadata
        s = _as_artifact(student)
    else:  # a module, or a number of the teacher's layers: it takes the teacher's inputs, task and preprocessing
        module = derive_student(t, student) if isinstance(student, int) else student
        s = _as_artifact(module, example_inputs=dict(t.examples))
        name = f"{t.name}-student" if isinstance(student, int) else s.name
        s = dataclasses.replace(s, meta={**t.meta, "name": name})
    cfg = DistillConfig(mode=mode, temperature=temperature, alpha=alpha, epochs=epochs, lr=lr,
                        batch_size=batch_size, num_samples=num_samples, heldout=heldout, patience=patience,
                        checkpoint_dir=checkpoint_dir, hidden_layers=tuple(hidden_layers),
                        hidden_weight=hidden_weight, freeze=tuple(freeze), augment=augment, device=device)
    return _run(s, cfg, data=data, teacher=t, check_speed=check_speed, batch_sizes=batch_sizes, spec=spec,
                workdir=workdir, progress=progress)


def lowrank(model: ModelLike, *, ratio: float | None = 0.5, energy: float | None = None,
            layers: Sequence[str] = ("*",), round_to: int = 8, check_speed: bool = True,
            batch_sizes: Sequence[int] = (1, 32), spec: BenchSpec = BenchSpec(), data: DataLike = None,
            workdir: str | Path | None = None, progress: ProgressFn | None = None) -> Artifact:
    """Factorize Linear/Conv2d layers by truncated SVD (rank by ratio or energy); parameters, cosine and latency
    are recorded. Fine-tune afterwards with ``distill(original, result, data=...)``.

    Example:
        >>> import torch, slimforge
        >>> net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        >>> small = slimforge.lowrank(slimforge.load(net, example_inputs=torch.randn(2, 256)), ratio=0.25,
        ...                           check_speed=False)
        >>> small.meta["parameters_after"] < small.meta["parameters_before"]
        True
    """
    from slimforge.techniques.lowrank import LowRankConfig

    cfg = LowRankConfig(ratio=None if energy is not None else ratio, energy=energy, layers=tuple(layers),
                        round_to=round_to)
    return _run(_as_artifact(model), cfg, data=data, teacher=None, check_speed=check_speed,
                batch_sizes=batch_sizes, spec=spec, workdir=workdir, progress=progress)


def fuse(model: ModelLike, *, check_speed: bool = True, batch_sizes: Sequence[int] = (1, 32),
         spec: BenchSpec = BenchSpec(), workdir: str | Path | None = None) -> Artifact:
    """Fold BatchNorm into the Conv/Linear before it; outputs verified to 1e-5.

    Example:
        >>> import torch, slimforge
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
        >>> slimforge.fuse(slimforge.load(net, example_inputs=torch.randn(1, 3, 8, 8)), check_speed=False
        ...                ).meta["fused_pairs"]
        1
    """
    from slimforge.techniques.fuse import FuseConfig

    return _run(_as_artifact(model), FuseConfig(), data=None, teacher=None, check_speed=check_speed,
                batch_sizes=batch_sizes, spec=spec, workdir=workdir, progress=None)
