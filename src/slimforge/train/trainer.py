"""One training loop for every technique that trains: fine-tuning after pruning, distillation, QAT.

It provides AdamW with a warm-up + cosine/linear/constant schedule, gradient clipping, early stopping on an
evaluation metric, checkpoints with resume (atomic writes), a deterministic seed, progress events (the CLI draws
them as rich bars), CPU or CUDA, and several processes under ``torchrun`` with DistributedDataParallel (NCCL on
GPUs, Gloo on CPUs). Only rank 0 writes checkpoints and reports progress.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import ProgressEvent, ProgressFn
from slimforge.core.outputs import atomic_path
from slimforge.errors import ConfigError

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
EvalFn = Callable[[nn.Module], float]  # higher is better


class Schedule(str, enum.Enum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig(Config):
    """Training settings.

    Example:
        >>> TrainConfig(epochs=3, lr=1e-3, patience=2).schedule.value
        'cosine'
    """

    kind = ""  # not a recipe step: the settings of the shared trainer
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.COSINE
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    patience: int | None = None  # epochs without improvement of the eval metric before stopping
    min_delta: float = 0.0
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # also checkpoint every N steps inside an epoch
    resume: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch: loss, lr, metric
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    steps: int = 0  # optimizer steps taken
    stopped_early: bool = False
    resumed_from_epoch: int | None = None
    resumed_from_step: int | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world size) under torchrun; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # each rank on its own GPU, before NCCL binds a communicator to a device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> the device this process trains on (its local rank's GPU under torchrun)."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for, but no CUDA device is available")
        rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
        return torch.device("cuda", rank)
    return torch.device("cpu")


def _lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule is Schedule.CONSTANT:
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.schedule is Schedule.LINEAR:
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def train(model: nn.Module, loss_fn: LossFn, data: Dataset, cfg: TrainConfig = TrainConfig(), *,
          eval_fn: EvalFn | None = None, progress: ProgressFn | None = None, task: str = "train",
          params: Sequence[nn.Parameter] | None = None,
          set_mode: Callable[[nn.Module, bool], None] | None = None) -> TrainResult:
    """Train ``model`` in place (it ends holding the best weights when ``eval_fn`` is given).

    ``data`` is a map-style dataset of tuples of tensors; ``loss_fn(model, batch)`` returns the loss.
    ``set_mode(model, training)`` switches train/eval mode for models whose ``train()`` is not usable (programs
    from ``torch.export`` use torchao's ``move_exported_model_to_train/eval``).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> m = torch.nn.Linear(4, 1)
        >>> ds = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        >>> mse = lambda mod, b: torch.nn.functional.mse_loss(mod(b[0]), b[1])
        >>> train(m, mse, ds, TrainConfig(epochs=2, batch_size=16)).epochs_run
        2
    """
    seed_everything(cfg.seed)
    mode = set_mode or (lambda m, training: m.train(training))
    rank, local_rank, world = _distributed()
    device = resolve_device(cfg.device, local_rank)
    model.to(device)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed) if world > 1 \
        else None
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=generator, drop_last=False)
    opt = torch.optim.AdamW(params if params is not None else [p for p in model.parameters() if p.requires_grad],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    result = TrainResult()
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    start_epoch, skip = 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    epoch_rng = generator.get_state()  # the shuffling state at the start of the epoch in progress
    partial = (0.0, 0)  # loss sum and count of the epoch in progress (for mid-epoch checkpoints)
    if ckpt_dir is not None and cfg.resume and (ckpt_dir / "last.pt").is_file():
        state = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=False)  # RNG states stay on the CPU; load_state_dict moves the rest
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        result = state["result"]
        best_state = state.get("best_model")
        start_epoch, skip = result.epochs_run, state.get("step_in_epoch", 0)
        generator.set_state(state["epoch_rng"] if skip else state["generator"])
        partial = state.get("partial", (0.0, 0))
        result.resumed_from_epoch, result.resumed_from_step = start_epoch, result.steps
        log.info("resumed training at epoch %d, step %d", start_epoch + 1, skip)
    stale = 0
    if result.best_epoch is not None:
        stale = result.epochs_run - result.best_epoch - 1
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        mode(net, True)
        if not skip:
            epoch_rng = generator.get_state()
        total_loss, n = partial if skip else (0.0, 0)
        for step, batch in enumerate(loader):
            if step < skip:  # resumed mid-epoch: these batches were trained on before the interruption
                continue
            batch = [t.to(device) for t in (batch if isinstance(batch, (list, tuple)) else [batch])]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net, batch)
            if not torch.isfinite(loss):
                raise ConfigError(f"the loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate "
                                  f"(now {cfg.lr:g})")
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(batch[0])
            n += len(batch[0])
            result.steps += 1
            if progress is not None and rank == 0:
                progress(ProgressEvent(task, epoch * len(loader) + step + 1, total))
            if (ckpt_dir is not None and rank == 0 and cfg.checkpoint_every and step + 1 < len(loader)
                    and (step + 1) % cfg.checkpoint_every == 0):
                _checkpoint(ckpt_dir, model, opt, sched, generator, result, best_state,
                            step_in_epoch=step + 1, epoch_rng=epoch_rng, partial=(total_loss, n))
        skip = 0
        row = {"epoch": epoch + 1, "loss": total_loss / max(n, 1), "lr": sched.get_last_lr()[0]}
        if eval_fn is not None:
            mode(net, False)
            with torch.no_grad():
                metric = float(eval_fn(model))
            row["metric"] = metric
            if result.best_metric is None or metric > result.best_metric + cfg.min_delta:
                result.best_metric, result.best_epoch, stale = metric, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        result.history.append(row)
        result.epochs_run = epoch + 1
        if ckpt_dir is not None and rank == 0:
            _checkpoint(ckpt_dir, model, opt, sched, generator, result, best_state)
        if cfg.patience is not None and eval_fn is not None and stale >= cfg.patience:
            result.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    mode(model, False)
    return result


def _checkpoint(ckpt_dir: Path, model: nn.Module, opt: Any, sched: Any, generator: torch.Generator,
                result: TrainResult, best_state: dict | None, *, step_in_epoch: int = 0,
                epoch_rng: torch.Tensor | None = None, partial: tuple[float, int] = (0.0, 0)) -> None:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
             "result": dataclasses.replace(result, history=list(result.history)), "best_model": best_state,
             "step_in_epoch": step_in_epoch, "epoch_rng": epoch_rng, "partial": partial}
    with atomic_path(ckpt_dir / "last.pt") as tmp:
        torch.save(state, tmp)
