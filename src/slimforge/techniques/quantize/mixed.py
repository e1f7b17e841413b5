"""Accuracy-aware mixed precision: quantize everything, and if the quality drop exceeds the budget, keep in float the
fewest layers that bring it back within budget.

Sensitivity is measured per layer (the damage when that layer alone is quantized). Layers are then returned to
float in order of damage, with a binary search for the smallest number that meets the budget. Static calibration
runs once; every trial reuses its ranges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path


import numpy as np

from slimforge.core.artifact import Artifact, Check, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.core.scratch import scratch_dir
from slimforge.errors import ConfigError, DataError, TechniqueFailed, require
from slimforge.evaluation.metrics import accuracy, cosine_similarity
from slimforge.techniques.quantize.coverage import require_quantized
from slimforge.techniques.quantize.calibration import Calibration
from slimforge.techniques.quantize.onnx_static import StaticQuantConfig, calibrate, write_static

log = logging.getLogger(__name__)


class BaseMethod(str, enum.Enum):
    STATIC = "static"
    DYNAMIC = "dynamic"


class QualityMetric(str, enum.Enum):
    AUTO = "auto"  # accuracy when the data has labels, else output cosine to FP32
    ACCURACY = "accuracy"  # drop in percentage points
    COSINE = "cosine"  # drop in mean cosine (0.005 means cosine >= 0.995)


@dataclass(frozen=True, kw_only=True, slots=True)
class MixedPrecisionConfig(Config):
    """INT8 with the fewest layers in float that keep the quality drop within ``max_drop``.

    Example:
        >>> MixedPrecisionConfig(max_drop=0.5, base="static").base.value
        'static'
    """

    kind = "mixed_precision"
    base: BaseMethod = BaseMethod.STATIC
    calibration: Calibration = Calibration.MINMAX
    per_channel: bool = True
    max_drop: float = 1.0
    metric: QualityMetric = QualityMetric.AUTO
    num_samples: int = 128
    eval_samples: int = 256
    max_float_layers: int = 32
    op_types: tuple[str, ...] = ()
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.max_drop < 0:
            raise ConfigError(f"max_drop must be >= 0, got {self.max_drop}")
        if self.max_float_layers < 1 or self.eval_samples < 1 or self.num_samples < 1:
            raise ConfigError("max_float_layers, eval_samples and num_samples must be >= 1")


@implements(MixedPrecisionConfig, fmt=Format.ONNX)
def _mixed_onnx(art: Artifact, cfg: MixedPrecisionConfig, ctx: RunContext) -> Artifact:
    onnx = require("onnx", extra="onnx")
    if ctx.calibration_data is None:
        raise DataError("mixed precision needs data to measure quality: pass data=... or --data")
    scorer = _Scorer(art, ctx, cfg)
    child = art.derive(Step("mixed_precision", cfg.to_dict()))
    final = ctx.output_for(child, ".onnx")
    with tempfile.TemporaryDirectory(prefix="mixed-", dir=scratch_dir()) as tmp:
        tmpdir = Path(tmp)
        static_cfg = StaticQuantConfig(calibration=cfg.calibration, per_channel=cfg.per_channel,
                                       num_samples=cfg.num_samples, op_types=cfg.op_types)
        if cfg.base is BaseMethod.STATIC:
            src, cache, _ = calibrate(art, static_cfg, ctx, tmpdir)
        else:
            src, cache = art.path, None
        graph = onnx.load(str(src), load_external_data=False).graph
        wanted = set(cfg.op_types) or ({"MatMul", "Gemm"} if cfg.base is BaseMethod.DYNAMIC else
                                       {"MatMul", "Gemm", "Conv"})
        weights = {i.name for i in graph.initializer}
        # only layers with stored weights can be quantized (attention's activation x activation MatMuls cannot)
        layers = [n.name for n in graph.node if n.op_type in wanted and n.name and len(n.input) > 1
                  and n.input[1] in weights]
        convs = [n.name for n in graph.node if n.op_type == "Conv" and n.name]
        counter = iter(range(10**9))

        def build(exclude: list[str]) -> Path:
            out = tmpdir / f"trial{next(counter)}.onnx"
            if cache is not None:
                write_static(art, src, out, static_cfg, cache, exclude=exclude)
            else:
                _write_dynamic(src, out, cfg, exclude + convs)
            return out

        def drop(exclude: list[str]) -> float:
            return scorer.reference - scorer.score(build(exclude))

        trials: dict[int, float] = {0: drop([])}
        order: list[tuple[str, float]] = []
        k = 0
        if trials[0] > cfg.max_drop:
            for i, name in enumerate(layers):  # damage of each layer quantized alone
                order.append((name, drop([n for n in layers if n != name])))
                ctx.report_progress("layer sensitivity", i + 1, len(layers))
            order.sort(key=lambda t: -t[1])
            ranked = [n for n, _ in order]
            lo, hi = 1, min(cfg.max_float_layers, len(ranked))
            trials[hi] = drop(ranked[:hi])
            if trials[hi] > cfg.max_drop:
                raise TechniqueFailed(
                    f"mixed precision could not meet the budget: with the {hi} most sensitive layers in float the "
                    f"{scorer.name} drop is {trials[hi]:.4g} > {cfg.max_drop:g} (all quantized: {trials[0]:.4g})")
            while lo < hi:  # smallest k that meets the budget
                mid = (lo + hi) // 2
                trials[mid] = drop(ranked[:mid])
                ctx.report_progress("float layers search", len(trials), None)
                if trials[mid] <= cfg.max_drop:
                    hi = mid
                else:
                    lo = mid + 1
            k = hi
        float_layers = [n for n, _ in order[:k]]
        with atomic_path(final) as out:
            out.write_bytes(build(float_layers).read_bytes())
            child = require_quantized(dataclasses.replace(child, path=out), source=art,
                                      method=f"mixed-precision INT8 ({cfg.base.value})",
                                      applies_to=", ".join(sorted(wanted)) + " with stored weights")
    check = Check("mixed_precision", True,
                  {"drop": trials[k], "max_drop": cfg.max_drop, "drop_all_quantized": trials[0],
                   "float_layers": float(k), "quantized_layers": float(len(layers) - k),
                   f"fp32_{scorer.name}": scorer.reference, "trials": float(len(trials) + len(order))},
                  f"{scorer.name} drop {trials[k]:.4g} <= {cfg.max_drop:g} with {k} of {len(layers)} layers in float"
                  + (f": {', '.join(float_layers)}" if float_layers else ""))
    meta = {"precision": f"int8-{cfg.base.value}-mixed", "float_layers": float_layers,
            "sensitivity": [{"layer": n, "drop": d} for n, d in order[:20]]}
    return dataclasses.replace(child, path=final, meta={**child.meta, **meta}).with_check(check)


class _Scorer:
    """Quality of a candidate ONNX file on the first ``eval_samples`` examples: accuracy or cosine to FP32."""

    def __init__(self, art: Artifact, ctx: RunContext, cfg: MixedPrecisionConfig) -> None:
        from slimforge.runtimes import open_session

        self.batches = list(ctx.calibration_data.batches(32, limit=cfg.eval_samples))
        labels = [b.labels for b in self.batches if b.labels is not None]
        self.labels = np.concatenate(labels) if len(labels) == len(self.batches) and labels else None
        use_acc = cfg.metric is QualityMetric.ACCURACY or (cfg.metric is QualityMetric.AUTO and
                                                           self.labels is not None)
        if use_acc and self.labels is None:
            raise DataError("metric 'accuracy' needs labelled data (sub-folders of images, or 'labels' in .npz)")
        self.name = "accuracy" if use_acc else "cosine"
        self.art = art
        sess = open_session(art, "onnxruntime")
        self.ref_out = np.concatenate([sess.run(b.feeds)[0] for b in self.batches])
        self.reference = self._measure(self.ref_out)

    def _measure(self, out: np.ndarray) -> float:
        if self.name == "accuracy":
            return accuracy(out, self.labels) * 100.0
        return float(cosine_similarity(self.ref_out, out).mean())

    def score(self, path: Path) -> float:
        from slimforge.runtimes import open_session

        sess = open_session(dataclasses.replace(self.art, path=path), "onnxruntime")
        try:
            return self._measure(np.concatenate([sess.run(b.feeds)[0] for b in self.batches]))
        finally:
            sess.close()


def _write_dynamic(src: Path, out: Path, cfg: MixedPrecisionConfig, exclude: list[str]) -> None:
    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            q.quantize_dynamic(str(src), str(out), weight_type=q.QuantType.QInt8, per_channel=cfg.per_channel,
                               nodes_to_exclude=exclude)
    except Exception as exc:
        raise TechniqueFailed(f"dynamic quantization failed: {str(exc).splitlines()[0][:300]}") from exc


