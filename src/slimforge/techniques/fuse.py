"""Operator fusion for PyTorch models: fold BatchNorm into the preceding Conv or Linear (eval mode).

The graph is read with ``torch.fx``; in every ``Conv{1,2,3}d -> BatchNorm`` and ``Linear -> BatchNorm1d`` pair whose
convolution output feeds only the norm, the layer takes the folded weights (``torch.nn.utils.fusion``) and the norm
becomes ``nn.Identity``. A following ReLU stays a separate op: runtimes fuse it into the kernel (Inductor, ONNX
Runtime, OpenVINO). Outputs are verified against the original.
"""

from __future__ import annotations

import copy
from collections import Counter
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


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` (eval mode) with each BatchNorm folded into the layer before it: that layer is replaced by
    the folded one and the norm by ``nn.Identity``, so the model keeps its own classes and hierarchy (it saves,
    exports and is edited as before). Pairs are read from the module's fx graphs: those it runs already
    (``torch.export`` programs unflattened, fx GraphModules), else a ``torch.fx`` trace."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    module = copy.deepcopy(module)
    set_training(module, False)
    fused = 0
    for layer_name, norm_name in [pair for prefix, graph in _graphs(module) for pair in _pairs(module, graph, prefix)]:
        layer, norm = module.get_submodule(layer_name), module.get_submodule(norm_name)
        if isinstance(layer, _CONVS):
            new = fuse_conv_bn_eval(layer, norm)
        elif isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
            new = fuse_linear_bn_eval(layer, norm)
        else:
            continue
        _replace(module, layer_name, new)
        _replace(module, norm_name, nn.Identity())
        fused += 1
    return module, fused


def _graphs(module: nn.Module) -> list[tuple[str, fx.Graph]]:
    owners = [(name, m.graph) for name, m in module.named_modules() if isinstance(getattr(m, "graph", None), fx.Graph)]
    if owners:
        return owners
    try:
        return [("", fx.symbolic_trace(module).graph)]
    except Exception as exc:
        raise TechniqueFailed(f"fusion needs a torch.fx-traceable model: {str(exc).splitlines()[0][:200]}") from exc


def _pairs(root: nn.Module, graph: fx.Graph, prefix: str) -> list[tuple[str, str]]:
    """(layer, norm) names in ``root`` of every BatchNorm that ``graph`` (of the submodule ``prefix``) calls once,
    right after a module that is called once and feeds only the norm."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        prev = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        names = tuple(f"{prefix}.{t}" if prefix else t for t in (prev.target, node.target))
        if calls[node.target] == calls[prev.target] == 1 and isinstance(root.get_submodule(names[1]), _NORMS):
            pairs.append(names)
    return pairs


def _replace(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, name, new)


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
