"""OpenVINO quantization with NNCF: static INT8 (``nncf.quantize``) and weight compression (``nncf.compress_weights``).

Text models use NNCF's transformer mode (SmoothQuant, mixed preset), which keeps embedding fidelity high.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import re

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.errors import TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.techniques.quantize.calibration import Calibration, calibration_feeds
from slimforge.techniques.quantize.coverage import require_quantized
from slimforge.techniques.quantize.onnx_static import StaticQuantConfig
from slimforge.techniques.quantize.weight_only import WeightOnlyConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet():
    """NNCF draws rich progress bars and logs at INFO; keep them out of our output."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf_log.setLevel(level)


class _Stream:
    """Re-iterable calibration data for NNCF (it passes over the data once per algorithm): each pass streams from the
    dataset again, so memory does not grow with the number of samples."""

    def __init__(self, ctx: RunContext, num_samples: int, input_names: list[str]) -> None:
        self.ctx, self.num_samples, self.input_names = ctx, num_samples, input_names
        self.seen = 0
        next(iter(self))  # fail now, with the clear DataError, when there is no data

    def __iter__(self):
        n = 0
        for feeds in calibration_feeds(self.ctx, num_samples=self.num_samples, input_names=self.input_names):
            n += 1
            yield feeds
        self.seen = max(self.seen, n)


def _is_transformer(art: Artifact) -> bool:
    return (art.meta.get("preprocess") or {}).get("kind") == "text" or art.meta.get("task") == "embedding"


# activations that go negative (SiLU is Sigmoid * x, Hardswish, GELU, ...): a symmetric activation scale (NNCF's
# PERFORMANCE preset) spends half its codes on a range they barely use, so they get asymmetric ones (MIXED)
SIGNED_ACTIVATIONS = {"Sigmoid", "HSwish", "HardSigmoid", "Gelu", "Elu", "PRelu", "Selu", "SoftPlus", "Mish", "Swish",
                      "Tanh", "Clamp"}


def _preset(nncf, model, transformer: bool):
    """MIXED (asymmetric activations) for transformers and for nets with activations that go negative; PERFORMANCE
    (symmetric, the fastest kernels) where every quantized activation follows a ReLU-like op."""
    types = {op.get_type_name() for op in model.get_ops()}
    if transformer or types & SIGNED_ACTIVATIONS:
        return nncf.QuantizationPreset.MIXED
    return nncf.QuantizationPreset.PERFORMANCE


def _ignored_scope(nncf, names: tuple[str, ...]):
    """``exclude`` names the ONNX nodes; OpenVINO's importer keeps a node's name on the op that ends it and names the
    ops it splits off after it (a Conv with a bias becomes ``NAME/WithoutBiases`` + ``NAME``), so each name also
    covers those."""
    if not names:
        return None
    return nncf.IgnoredScope(patterns=[f"^{re.escape(n)}(/.*)?$" for n in names], validate=False)


@implements(StaticQuantConfig, fmt=Format.OPENVINO)
def _quantize_static_openvino(art: Artifact, cfg: StaticQuantConfig, ctx: RunContext) -> Artifact:
    ov = require("openvino", extra="openvino")
    nncf = require("nncf", extra="openvino")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # NNCF's estimators: min/max, quantiles (percentile), and a histogram-based one (its nearest to entropy/KL)
    estimator = {Calibration.MINMAX: None, Calibration.PERCENTILE: RangeEstimatorParametersSet.MEAN_QUANTILE,
                 Calibration.ENTROPY: RangeEstimatorParametersSet.HISTOGRAM}[cfg.calibration]
    advanced = (AdvancedQuantizationParameters(activations_range_estimator_params=estimator) if estimator
                else AdvancedQuantizationParameters())
    transformer = _is_transformer(art)
    samples = _Stream(ctx, cfg.num_samples, art.io.input_names)
    ctx.report_progress("calibrate (nncf)", 0, 1)
    model = ov.Core().read_model(str(art.path))
    ignored = _ignored_scope(nncf, cfg.exclude)
    preset = _preset(nncf, model, transformer)
    try:
        with _quiet():
            quantized = nncf.quantize(
                model, nncf.Dataset(samples), subset_size=cfg.num_samples,
                model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                preset=preset,
                ignored_scope=ignored, advanced_parameters=advanced)
    except Exception as exc:
        raise TechniqueFailed(f"NNCF quantization failed on {art.name}: {str(exc).splitlines()[0][:300]}") from exc
    ctx.report_progress("calibrate (nncf)", 1, 1)
    child = art.derive(Step("quantize_static", cfg.to_dict()),
                       meta={"precision": "int8-static", "calibration": cfg.calibration.value,
                             "calibration_samples": samples.seen, "nncf_preset": preset.value})
    return _save_checked(ov, quantized, art, child, ctx, min_cosine=cfg.min_cosine,
                         what=dict(method="static INT8 (NNCF)", applies_to="Convolution, MatMul and the ops "
                                   "NNCF quantizes around them"))


@implements(WeightOnlyConfig, fmt=Format.OPENVINO)
def _compress_weights_openvino(art: Artifact, cfg: WeightOnlyConfig, ctx: RunContext) -> Artifact:
    ov = require("openvino", extra="openvino")
    nncf = require("nncf", extra="openvino")
    mode = {4: nncf.CompressWeightsMode.INT4_SYM, 8: nncf.CompressWeightsMode.INT8_ASYM}[cfg.bits]
    kwargs = {"group_size": cfg.group_size, "ratio": cfg.ratio} if cfg.bits == 4 else {}
    model = ov.Core().read_model(str(art.path))
    try:
        with _quiet():
            compressed = nncf.compress_weights(model, mode=mode, **kwargs)
    except Exception as exc:
        raise TechniqueFailed(f"NNCF weight compression failed on {art.name}: {str(exc).splitlines()[0][:300]}") \
            from exc
    child = art.derive(Step("weight_only", cfg.to_dict()), meta={"precision": f"int{cfg.bits}-weights"})
    int4 = dict(method="int4 weight compression (NNCF)", need=("u4 constant", "i4 constant", "nf4 constant"),
                applies_to="MatMul weights with a channel size divisible by the group size (Convolution and "
                           "embedding weights stay at 8 bits)")
    int8 = dict(method="int8 weight compression (NNCF)", applies_to="MatMul, Convolution and embedding weights")
    return _save_checked(ov, compressed, art, child, ctx, min_cosine=cfg.min_cosine,
                         what=int4 if cfg.bits == 4 else int8)


def _save_checked(ov, model, art: Artifact, child: Artifact, ctx: RunContext, *, min_cosine: float,
                  what: dict) -> Artifact:
    final = ctx.output_for(child, ".xml")
    with atomic_path(final) as tmp:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        counted = require_quantized(dataclasses.replace(child, path=tmp), source=art, **what)
        check = fidelity_check(art, counted, min_cosine=min_cosine, name="quant_fidelity",
                               data=ctx.calibration_data)
    return dataclasses.replace(counted, path=final).with_check(check)
