"""Operator fusion for PyTorch models: fold BatchNorm into the preceding Conv or Linear (eval mode).

The graph is traced with ``torch.fx``; every ``Conv{1,2,3}d -> BatchNorm`` and ``Linear -> BatchNorm1d`` pair whose
convolution output feeds only the norm is replaced by one layer with folded weights (``torch.nn.utils.fusion``). A
following ReLU stays a separate op: runtimes fuse it into the kernel (Inductor, ONNX Runtime, OpenVINO). Outputs are
verified against the original.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import fx, nn

from slimforge.convert.verify import verification_cases, verify
from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed
from slimforge.torch_utils import run_module, set_training

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True, kw_only=True, slots=True)
class FuseConfig(Config):
    """Fold BatchNorm into Conv/Linear.

    Example:
        >>> FuseConfig().atol
        1e-05
    """

    kind = "fuse"
    atol: float = 1e-5
    rtol: float = 1e-5
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.atol < 0 or self.rtol < 0:
            raise ConfigError("atol and rtol must be >= 0")


def fold_batchnorm(module: nn.Module) -> tuple[fx.GraphModule, int]:
    """A traced copy of ``module`` (eval mode) with BatchNorm folded into the layer before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    module = copy.deepcopy(module)
    set_training(module, False)
    try:
        gm = fx.symbolic_trace(module)
    except Exception as exc:
        raise TechniqueFailed(f"fusion needs a torch.fx-traceable model: {str(exc).splitlines()[0][:200]}") from exc
    mods = dict(gm.named_modules())
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), _NORMS):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer, norm = mods[prev.target], mods[node.target]
        if isinstance(layer, _CONVS):
            new = fuse_conv_bn_eval(layer, norm)
        elif isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
            new = fuse_linear_bn_eval(layer, norm)
        else:
            continue
        _replace(gm, prev.target, new)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        fused += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, fused


def _replace(gm: fx.GraphModule, target: str, new: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, new)


@implements(FuseConfig, fmt=Format.TORCH)
def _fuse_torch(art: Artifact, cfg: FuseConfig, ctx: RunContext) -> Artifact:
    fused_module, n = fold_batchnorm(art.handle)
    child = art.derive(Step("fuse", cfg.to_dict()), handle=fused_module, path=None, meta={"fused_pairs": n})
    reference = copy.deepcopy(art.handle)
    set_training(reference, False)
    check = verify(lambda f: run_module(reference, f), lambda f: run_module(fused_module, f),
                   verification_cases(art), art.io.output_names, atol=cfg.atol, rtol=cfg.rtol, name="verify_fusion")
    return child.with_check(check)


__all__ = ["FuseConfig", "fold_batchnorm"]
