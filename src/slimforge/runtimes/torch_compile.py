"""PyTorch with ``torch.compile`` (Inductor): the first runs compile, later runs are fast. CPU, and CUDA where
present. INT8 from torchao and FP8 pay off only here, not in eager mode."""

from __future__ import annotations

import torch

from slimforge.core.artifact import Artifact
from slimforge.runtimes.base import register_runtime
from slimforge.runtimes.torch_eager import TorchRuntime, TorchSession


class TorchCompileRuntime(TorchRuntime):
    name = "torch_compile"

    def open(self, art: Artifact, *, device: str = "cpu", threads: int | None = None,
             precision: str | None = None) -> TorchSession:
        sess = super().open(art, device=device, threads=threads, precision=precision)
        sess.module = torch.compile(sess.module, dynamic=None)
        return sess


register_runtime(TorchCompileRuntime())
