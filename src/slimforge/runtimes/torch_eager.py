"""PyTorch eager runtime (CPU, and CUDA where present)."""

from __future__ import annotations

import contextlib
import copy
from typing import Mapping

import numpy as np
import torch
from torch import nn

from slimforge.core.artifact import Artifact, Format
from slimforge.runtimes.base import check_feeds, register_runtime
from slimforge.torch_utils import fp32_precision, outputs_to_list, set_training


class TorchSession:
    """An opened torch module. ``run`` takes and returns numpy arrays (the API's edge); ``prepare`` puts feeds where
    the module runs once (through pinned host buffers on a GPU) and ``run_tensors`` runs on them, leaving the outputs
    on the device: what compute latency is timed with."""

    def __init__(self, art: Artifact, module: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
        self.art = art
        self.module = module
        self.device = torch.device(art.meta["device"]) if art.meta.get("device") else device  # where it computes
        self.dtype = dtype
        self.input_names = art.io.input_names
        self._pinned: dict[tuple, torch.Tensor] = {}

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":
            key = (tuple(t.shape), t.dtype)
            buf = self._pinned.get(key)
            if buf is None:
                if len(self._pinned) >= 16:  # a server sees many batch sizes: keep the newest few
                    self._pinned.clear()
                buf = self._pinned[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            buf.copy_(t)
            t = buf.to(self.device, non_blocking=True)
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        return t

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        """The feeds as tensors on the module's device, checked and ordered."""
        return [self._to_device(a) for a in check_feeds(self.art, feeds)]

    def run_tensors(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # on a GPU, FP32 is IEEE FP32 unless the model asks for TF32
        precision = fp32_precision(False) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), precision:
            return outputs_to_list(self.module(*tensors))

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        out = self.run_tensors(self.prepare(feeds))
        return [o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for o in out]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
        self._pinned.clear()


class TorchRuntime:
    name = "torch"
    formats = (Format.TORCH, Format.TORCHSCRIPT, Format.TORCH_EXPORT)

    def available(self) -> bool:
        return True

    def devices(self) -> tuple[str, ...]:
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def open(self, art: Artifact, *, device: str = "cpu", threads: int | None = None,
             precision: str | None = None) -> TorchSession:
        if threads:
            torch.set_num_threads(threads)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision or "")
        dev = torch.device(device)
        module = art.handle
        # changing mode, device or dtype happens on the session's own copy: the user's module stays as it was
        if getattr(module, "training", False) or dtype is not None or dev.type != "cpu":
            module = copy.deepcopy(module)
            set_training(module, False)
        pinned = art.meta.get("device")  # e.g. FP8 modules live on their GPU and move inputs themselves
        if isinstance(module, nn.Module) and pinned is None:
            module = module.to(dev)
            if dtype is not None:
                module = module.to(dtype)
        return TorchSession(art, module, dev, dtype)


register_runtime(TorchRuntime())
