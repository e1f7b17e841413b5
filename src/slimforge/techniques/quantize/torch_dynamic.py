"""Dynamic INT8 of PyTorch Linear/LSTM/GRU layers with ``torch.ao`` (deprecated upstream: kept in this one module so it
can be swapped for torchao without touching anything else)."""

from __future__ import annotations

import copy
import warnings

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import NothingQuantized, TechniqueFailed
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.torch_utils import set_training, without_fused_fastpaths
from slimforge.techniques.quantize.coverage import require_quantized
from slimforge.techniques.quantize.onnx_dynamic import DynamicQuantConfig


@implements(DynamicQuantConfig, fmt=Format.TORCH)
def _quantize_dynamic_torch(art: Artifact, cfg: DynamicQuantConfig, ctx: RunContext) -> Artifact:
    import torch
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        module = copy.deepcopy(art.handle)  # the parent's module stays in float
        set_training(module, False)
        excluded = set(cfg.exclude)
        # MultiheadAttention computes with its out_proj's raw weight (never through the module): left in float
        inside_mha = {f"{name}.{child}" if name else child for name, m in module.named_modules()
                      if isinstance(m, nn.MultiheadAttention) for child, _ in m.named_children()}
        targets = {name for name, m in module.named_modules()
                   if isinstance(m, (nn.Linear, nn.LSTM, nn.GRU)) and name not in excluded | inside_mha}
        if not targets:
            raise NothingQuantized("nothing was quantized: dynamic INT8 (torch.ao) applies to Linear, LSTM and GRU "
                                   "layers; this model has none" + (" outside exclude" if excluded else ""))
        if "" in targets:  # the model is itself a Linear/LSTM/GRU: torch.ao swaps children only, so hold it in one
            module, targets = nn.Sequential(module), {"0"}
        try:
            qconfig = per_channel_dynamic_qconfig if cfg.per_channel else default_dynamic_qconfig
            quantized = quantize_dynamic(module, {name: qconfig for name in targets}, dtype=torch.qint8,
                                         inplace=False)
            without_fused_fastpaths(quantized)
        except Exception as exc:
            raise TechniqueFailed(f"torch dynamic quantization failed on {art.name}: {exc}") from exc
    child = art.derive(Step("quantize_dynamic", cfg.to_dict()), handle=quantized, path=None,
                       meta={"precision": "int8-dynamic", "quantized_layers": len(targets)})
    child = require_quantized(child, method="dynamic INT8 (torch.ao)", applies_to="Linear, LSTM and GRU layers",
                              source=art)
    check = fidelity_check(art, child, min_cosine=cfg.min_cosine, name="quant_fidelity", data=ctx.calibration_data)
    return child.with_check(check)
