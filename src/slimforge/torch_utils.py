"""Helpers for torch modules shared by every layer: run a module on numpy feeds, set its mode, flatten outputs, cast
around a module placed on a GPU, and the FP32 matmul precision (IEEE or TF32) of a call."""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn


def outputs_to_list(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = tuple(out.values()) if isinstance(out, dict) else out.to_tuple()
    if isinstance(out, (tuple, list)):
        flat: list[torch.Tensor] = []
        for o in out:
            flat.extend(outputs_to_list(o))
        return flat
    raise TypeError(f"model returned {type(out).__name__}; expected tensors")


def set_training(module: object, mode: bool) -> None:
    """Set a module's mode where it has one (programs from ``torch.export`` refuse ``train()``/``eval()``)."""
    try:
        module.train(mode)  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        pass


def without_fused_fastpaths(module: nn.Module) -> nn.Module:
    """Turn off the fused inference kernels of ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` in
    ``module`` (in place). Those kernels read each Linear's raw ``weight`` tensor, so once a technique swaps the
    Linears for quantized ones they crash (a torch.ao dynamic Linear's ``weight`` is a method) or would bypass them.
    The slow path computes the same through the modules themselves."""
    for m in module.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            m.activation_relu_or_gelu = 0  # only the fast path reads it (as its "use GELU" flag)
        elif isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
    return module


def runs_fx_graphs(module: object) -> bool:
    """Whether a module runs torch.fx graphs (a ``torch.export`` program unflattened, an fx GraphModule): a
    TorchScript trace of it fixes the sizes its graphs compute, so exporters that trace should not be preferred."""
    return isinstance(module, nn.Module) and any(isinstance(getattr(m, "graph", None), torch.fx.Graph)
                                                 for m in module.modules())


def run_module(module: nn.Module, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a module once in eval mode on numpy feeds (positional, in order) without changing its training flag, on
    the device its parameters are on (outputs come back as numpy arrays)."""
    modes = {m: m.training for m in module.modules()} if hasattr(module, "modules") else {}
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        if any(modes.values()):
            set_training(module, False)
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in feeds.values()])
        return [t.detach().cpu().float().numpy() if t.dtype in (torch.float16, torch.bfloat16)
                else t.detach().cpu().numpy() for t in outputs_to_list(out)]
    finally:
        if any(modes.values()):  # each submodule back in its own mode (a model in eval mode may hold a
            for m, mode in modes.items():  # wrapper that is not, or the reverse)
                m.training = mode


@contextlib.contextmanager
def fp32_precision(tf32: bool) -> Iterator[None]:
    """FP32 matmuls and convolutions on a GPU in IEEE FP32 (``tf32=False``) or TensorFloat-32 for this call only;
    the process-wide flags are restored after. An FP32 baseline must be IEEE: cuDNN convolutions default to TF32
    and other code in the process may have turned it on for matmuls."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    old = m.allow_tf32, c.allow_tf32
    m.allow_tf32 = c.allow_tf32 = tf32
    try:
        yield
    finally:
        m.allow_tf32, c.allow_tf32 = old


class Placed(nn.Module):
    """A model placed for a GPU as one traceable function: float inputs cast to the model's dtype (and to
    channels_last for images), float outputs back in FP32. Compiled or exported whole, so the casts fuse into the
    model's first and last kernels (and sit inside its CUDA graph)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype | None, channels_last: bool) -> None:
        super().__init__()
        self.inner, self.dtype, self.channels_last = inner, dtype, channels_last

    def forward(self, *xs: torch.Tensor):
        args = []
        for x in xs:
            if x.is_floating_point() and self.dtype is not None:
                x = x.to(self.dtype)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            args.append(x)
        out = self.inner(*args)
        if isinstance(out, torch.Tensor):
            return out.float() if out.is_floating_point() else out
        return tuple(o.float() if o.is_floating_point() else o for o in outputs_to_list(out))
