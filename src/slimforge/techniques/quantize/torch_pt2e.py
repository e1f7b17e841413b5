"""Static INT8 for PyTorch models through PT2E (``torch.export`` + ``X86InductorQuantizer`` from torchao).

The converted model runs correctly in eager mode but is fast only under ``torch.compile`` (runtime
``torch_compile``), where Inductor lowers it to INT8 kernels. MinMax uses min/max observers; entropy and percentile
use the quantizer's histogram observer (its range search minimises quantization error over the histogram).
"""

from __future__ import annotations

import copy
import warnings

import torch

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.torch_utils import set_training
from slimforge.techniques.quantize.calibration import Calibration, calibration_feeds
from slimforge.techniques.quantize.coverage import require_quantized
from slimforge.techniques.quantize.onnx_static import StaticQuantConfig


def x86_config(calibration: Calibration, *, is_qat: bool = False):
    """The X86 Inductor quantization config, with min/max activation observers for ``minmax``."""
    require("torchao", extra="torch", package="torchao")
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    config = xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if calibration is Calibration.MINMAX and not is_qat:
        import dataclasses

        from torchao.quantization.pt2e.observer import MinMaxObserver

        act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(
            eps=2**-12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(config)
    return quantizer


def export_for_quantization(module: torch.nn.Module, art: Artifact) -> torch.nn.Module:
    """``torch.export`` the module with the artifact's dynamic axes (batch, sequence, ...), else static shapes."""
    args = tuple(torch.from_numpy(v) for v in art.examples.values())
    dims: dict[str, object] = {}
    shapes = tuple({a: dims.setdefault(d, torch.export.Dim.AUTO) for a, d in spec.dynamic_axes().items()}
                   for spec in art.io.inputs)
    try:
        return torch.export.export(module, args, dynamic_shapes=shapes).module()
    except Exception:
        return torch.export.export(module, args).module()


@implements(StaticQuantConfig, fmt=Format.TORCH)
def _quantize_static_torch(art: Artifact, cfg: StaticQuantConfig, ctx: RunContext) -> Artifact:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    module = copy.deepcopy(art.handle)
    set_training(module, False)
    quantizer = x86_config(cfg.calibration)
    seen = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_pt2e(export_for_quantization(module, art), quantizer)
            with torch.no_grad():
                for batch in calibration_feeds(ctx, num_samples=cfg.num_samples, input_names=art.io.input_names,
                                               batch_size=16):
                    prepared(*[torch.from_numpy(v) for v in batch.values()])
                    seen += len(next(iter(batch.values())))
                    ctx.report_progress(f"calibrate ({cfg.calibration.value})", seen, cfg.num_samples)
            converted = convert_pt2e(prepared)
    except TechniqueFailed:
        raise
    except Exception as exc:
        raise TechniqueFailed(f"PT2E quantization failed on {art.name} (the model must be torch.export-able): "
                              f"{str(exc).splitlines()[0][:300]}") from exc
    child = art.derive(Step("quantize_static", cfg.to_dict()), handle=converted, path=None,
                       meta={"precision": "int8-static", "calibration": cfg.calibration.value,
                             "calibration_samples": seen, "fast_on": "torch_compile"})
    child = require_quantized(child, method="static INT8 (PT2E, X86 Inductor)",
                              applies_to="Conv, Linear and the ops around them", source=art)
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="quant_fidelity",
                                           data=ctx.calibration_data))
