"""PyTorch eager runtime (CPU, and CUDA where present)."""

from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch
from torch import nn

from slimforge.core.artifact import Artifact, Format
from slimforge.runtimes.base import check_feeds, register_runtime
from slimforge.torch_utils import outputs_to_list, set_training


class TorchSession:
    def __init__(self, art: Artifact, module: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
        self.art = art
        self.module = module
        self.device = device
        self.dtype = dtype
        self.input_names = art.io.input_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = check_feeds(self.art, feeds)
        tensors = []
        for a in arrays:
            t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
            if self.dtype is not None and t.is_floating_point():
                t = t.to(self.dtype)
            tensors.append(t)
        with torch.inference_mode():
            out = outputs_to_list(self.module(*tensors))
        return [o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for o in out]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]


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
