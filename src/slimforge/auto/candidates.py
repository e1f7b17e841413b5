"""Candidates of the search, and the proposers that offer them.

A proposer is a function ``(SearchSpace) -> Iterable[Candidate]`` registered with ``@proposer``; a technique joins the
search by registering one (in its own module or here). Each candidate is a ``Recipe`` (steps, and the runtime that
runs the result) plus search hints: ``cost`` orders the search (cheap first); ``after`` names a candidate whose quality
failure makes this one pointless (a more aggressive version of the same thing), so the planner skips it; ``unless``
names a cheaper one whose success makes it unnecessary; ``optional`` steps stay only if they make it faster.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config
from slimforge.plan.recipe import Recipe

_PROPOSERS: list[Callable[[SearchSpace], Iterable[Candidate]]] = []


@dataclass(frozen=True)
class Candidate:
    """A recipe plus the hints that order and prune the search."""

    recipe: Recipe
    precision: str = "fp32"
    cost: int = 1  # relative expense: 1 conversion, 2 dynamic quantization, 3 calibration, 10+ training
    trains: bool = False
    after: str | None = None  # skip when this candidate already missed the quality goals
    unless: str | None = None  # skip when this (cheaper) candidate already met them
    optional: tuple[int, ...] = ()  # indices of steps kept only if they make the result faster (graph passes)

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def steps(self) -> tuple[Config, ...]:
        return self.recipe.steps

    @property
    def runtime(self) -> str:
        return self.recipe.runtime

    def without(self, index: int) -> Candidate:
        """This candidate without its step ``index`` (for the ablation of optional steps)."""
        steps = self.steps[:index] + self.steps[index + 1:]
        name = f"{self.name} without {self.steps[index].kind}"
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, steps=steps, name=name), optional=())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runtime": self.runtime, "precision": self.precision, "cost": self.cost,
                "steps": [s.to_dict() for s in self.steps], "trains": self.trains}


def candidate(name: str, steps: Iterable[Config], runtime: str, precision: str = "fp32", **hints: Any) -> Candidate:
    """A candidate from its name, steps and runtime, plus hints (``cost``, ``after``, ``unless``, ``optional``,
    ``trains``)."""
    return Candidate(Recipe(steps=tuple(steps), runtime=runtime, name=name), precision, **hints)


@dataclass(frozen=True)
class SearchSpace:
    """What proposers see: the model, the narrowed target, whether training data exists, and facts about the model
    (``extra``: the ONNX family and its sensitive nodes)."""

    art: Artifact
    target: Any  # targets.Target
    train_seconds: float | None  # estimated seconds of one training epoch on the data (None: no training data)
    quality_budget: float | None = None  # allowed cosine drop (for mixed precision), when the goals give one
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_torch(self) -> bool:
        return self.art.format is Format.TORCH

    @property
    def text(self) -> bool:
        return (self.art.meta.get("preprocess") or {}).get("kind") == "text"


def proposer(fn: Callable[[SearchSpace], Iterable[Candidate]]) -> Callable[[SearchSpace], Iterable[Candidate]]:
    """Register a proposer of candidates."""
    _PROPOSERS.append(fn)
    return fn


def propose(space: SearchSpace) -> list[Candidate]:
    seen: dict[str, Candidate] = {}
    for fn in _PROPOSERS:
        for c in fn(space):
            if c.runtime in space.target.runtimes and (c.precision in space.target.precisions):
                seen.setdefault(c.name, c)
    return sorted(seen.values(), key=lambda c: c.cost)


def _to_onnx(space: SearchSpace) -> list[Config]:
    """Export PyTorch models; normalise ONNX files (opset, constant weights -> initializers, shapes) first."""
    from slimforge.convert.normalize import NormalizeConfig
    from slimforge.convert.onnx import ExportConfig

    if space.art.format in (Format.TORCH, Format.TORCHSCRIPT, Format.TORCH_EXPORT):
        return [ExportConfig()]
    return [NormalizeConfig()] if space.art.format is Format.ONNX else []


def _to_openvino(space: SearchSpace) -> list[Config] | None:
    from slimforge.convert.openvino import OpenVinoConvertConfig

    if space.art.format is Format.OPENVINO:
        return []
    return [*_to_onnx(space), OpenVinoConvertConfig()]


@proposer
def runtimes_fp32(space: SearchSpace) -> Iterable[Candidate]:
    """The same model in FP32 on each runtime: often the biggest, and cheapest, win."""
    from slimforge.convert.optimize import GraphOptConfig

    if space.art.format is not Format.OPENVINO:
        onnx = _to_onnx(space)
        yield candidate("onnxruntime fp32", (*onnx, GraphOptConfig()), "onnxruntime", "fp32", cost=1,
                        optional=(len(onnx),))
    ov = _to_openvino(space)
    if ov is not None and space.art.format is not Format.OPENVINO:
        yield candidate("openvino fp32", tuple(ov), "openvino", "fp32", cost=1)


@proposer
def quantization(space: SearchSpace) -> Iterable[Candidate]:
    """Each quantization method on each runtime that runs it well."""
    from slimforge.convert.optimize import GraphOptConfig
    from slimforge.techniques.quantize.cast import CastConfig
    from slimforge.techniques.quantize.onnx_dynamic import DynamicQuantConfig
    from slimforge.techniques.quantize.onnx_static import Calibration, StaticQuantConfig
    from slimforge.techniques.quantize.weight_only import WeightOnlyConfig

    onnx = [*_to_onnx(space), GraphOptConfig()]
    g = len(onnx) - 1
    ov = _to_openvino(space)
    ops = ("MatMul",) if space.text else ()
    if space.art.format is not Format.OPENVINO:
        # convolutions stay float under dynamic INT8 (ConvInteger is slow on CPUs); static QDQ quantizes them
        yield candidate("onnxruntime int8 dynamic", (*onnx, DynamicQuantConfig(per_channel=True, min_cosine=0.0)),
                        "onnxruntime", "int8", cost=2, optional=(g,))
        family = space.extra.get("family")
        # a detector's decode (grids, Sigmoid, the Concat of pixel boxes with probabilities) stays in float
        tail = tuple(space.extra.get("output_tail") or ()) if family == "detector" else ()
        yield candidate("onnxruntime int8 static", (*onnx, StaticQuantConfig(
            calibration=Calibration.MINMAX, per_channel=True, op_types=ops, exclude=tail, min_cosine=0.0)),
            "onnxruntime", "int8", cost=4, optional=(g,))
        sensitive = tuple(space.extra.get("sensitive_nodes") or ())
        if family in ("cnn", "detector") and sensitive:
            # heads (the last layers, Sigmoid/Softmax regions) stay in float: where INT8 hurts detections most
            yield candidate("onnxruntime int8 static, head in float", (*onnx, StaticQuantConfig(
                calibration=Calibration.MINMAX, per_channel=True, exclude=sensitive, min_cosine=0.0)),
                "onnxruntime", "int8", cost=4, optional=(g,))
        yield candidate("onnxruntime int4 weights", (*onnx, WeightOnlyConfig(bits=4, min_cosine=0.0)),
                        "onnxruntime", "int4", cost=3, optional=(g,), after="onnxruntime int8 dynamic")
        if space.quality_budget is not None:
            from slimforge.techniques.quantize.mixed import MixedPrecisionConfig

            yield candidate("onnxruntime int8 dynamic, mixed precision", (*onnx, MixedPrecisionConfig(
                base="dynamic", max_drop=space.quality_budget, metric="cosine",
                op_types=("MatMul",) if space.text else ())), "onnxruntime", "int8", cost=6,
                optional=(g,), unless="onnxruntime int8 dynamic")
    if ov is not None:
        yield candidate("openvino int8 weights", (*ov, WeightOnlyConfig(bits=8, min_cosine=0.0)), "openvino",
                        "int8-weight", cost=2)
        yield candidate("openvino int4 weights", (*ov, WeightOnlyConfig(bits=4, min_cosine=0.0)), "openvino",
                        "int4", cost=3, after="openvino int8 weights")
        yield candidate("openvino bf16", (*ov, CastConfig(dtype="bf16", min_cosine=0.0)), "openvino", "bf16",
                        cost=2)
        tail = tuple(space.extra.get("output_tail") or ()) if space.extra.get("family") == "detector" else ()
        yield candidate("openvino int8 static (nncf)", (*ov, StaticQuantConfig(
            calibration=Calibration.MINMAX, per_channel=True, exclude=tail, min_cosine=0.0)), "openvino", "int8",
            cost=5)
    if space.is_torch and space.target.device != "cuda":  # quantized::linear_dynamic runs on CPUs only
        yield candidate("torch int8 dynamic", (DynamicQuantConfig(per_channel=True, min_cosine=0.0),), "torch",
                        "int8", cost=2)


@proposer
def prune_and_distill(space: SearchSpace) -> Iterable[Candidate]:
    """Structured pruning, recovered by distillation from the original, then the best INT8 path: only for PyTorch
    models with training data, when an estimate of the training time fits in the time left."""
    if not (space.is_torch and space.target.training and space.train_seconds is not None):
        return
    from slimforge.convert.optimize import GraphOptConfig
    from slimforge.techniques.distill.torch_distill import DistillConfig
    from slimforge.techniques.prune.torch_prune import PruneConfig
    from slimforge.techniques.quantize.onnx_static import Calibration, StaticQuantConfig

    from slimforge.techniques.prune.subnet_config import SubnetSearchConfig

    epochs = 10  # the planner skips these (and says so) when the estimated training time does not fit the budget
    hidden = ("*encoder.layer.?",) if space.text else ()
    distill = DistillConfig(epochs=epochs, lr=1e-3, hidden_layers=hidden, patience=3, max_drop=None,
                            min_cosine=None)  # (like min_cosine=0.0 above: the search's quality goals judge)
    trained = (PruneConfig(ratio=0.5, round_to=8, min_cosine=0.0), distill)
    # the architecture search's sub-network (encoders and CNNs) under half the measured latency, then distilled
    searched = (SubnetSearchConfig(latency_share=0.5, batch=max(space.target.batch_sizes)), distill) if (
        space.text or sum(type(m).__name__ == "Conv2d" for m in space.art.handle.modules()) >= 2) else None
    if space.target.device == "cuda":
        from slimforge.techniques.gpu import GpuConfig

        yield candidate("pruned 50% + distilled, torch bf16", (*trained, GpuConfig(dtype="bf16", min_cosine=0.0)),
                        "torch", "bf16", cost=20, trains=True)
        if searched:
            yield candidate("searched sub-network + distilled, torch bf16", (*searched, GpuConfig(
                dtype="bf16", min_cosine=0.0)), "torch", "bf16", cost=22, trains=True)
        return
    onnx = [*_to_onnx(space), GraphOptConfig()]
    int8 = StaticQuantConfig(calibration=Calibration.MINMAX, per_channel=True,
                             op_types=("MatMul",) if space.text else (), min_cosine=0.0)
    yield candidate("pruned 50% + distilled, onnxruntime fp32", (*trained, *onnx), "onnxruntime", "fp32", cost=20,
                    trains=True)
    yield candidate("pruned 50% + distilled, onnxruntime int8 static", (*trained, *onnx, int8), "onnxruntime",
                    "int8", cost=21, trains=True)
    if searched:  # search + distil + INT8
        yield candidate("searched sub-network + distilled, onnxruntime int8 static", (*searched, *onnx, int8),
                        "onnxruntime", "int8", cost=22, trains=True)


@proposer
def gpu(space: SearchSpace) -> Iterable[Candidate]:
    """On a GPU target, for PyTorch models: TF32, FP16 and BF16 eager (channels_last for convolutional nets),
    ``torch.compile`` (CUDA graphs: the launch overhead of small batches), attention kept fused under compile, FP8
    (``torch._scaled_mm``, compute capability >= 8.9) and INT8 (torchao). bf16 eager and bf16 + compile are also
    what a user would try by hand: the report shows them beside the choice."""
    if space.target.device != "cuda" or not space.is_torch:
        return
    from torch import nn

    from slimforge.techniques.gpu import GpuConfig

    conv = sum(isinstance(m, nn.Conv2d) for m in space.art.handle.modules()) > 2  # not a ViT's patch embedding
    attention = any("attn" in type(m).__name__.lower() or "attention" in type(m).__name__.lower()
                    for m in space.art.handle.modules())
    yield candidate("torch tf32", (GpuConfig(dtype="tf32", min_cosine=0.0),), "torch", "fp32", cost=1)
    for dt in ("bf16", "fp16"):
        yield candidate(f"torch {dt} eager", (GpuConfig(dtype=dt, min_cosine=0.0),), "torch", dt, cost=1)
        if conv:
            yield candidate(f"torch {dt} channels_last", (GpuConfig(dtype=dt, channels_last=conv, min_cosine=0.0),),
                            "torch", dt, cost=1)
    yield candidate("torch bf16 + compile", (GpuConfig(dtype="bf16", compile="default", min_cosine=0.0),), "torch",
                    "bf16", cost=3)
    for dt in ("fp16", "bf16"):  # H200, ViT-B/16: bf16 GEMMs ran 3% faster than fp16 at b256; ResNets favour fp16
        yield candidate(f"torch {dt} + compile + CUDA graphs", (GpuConfig(
            dtype=dt, channels_last=conv, compile="reduce-overhead", min_cosine=0.0),), "torch", dt, cost=3)
    if attention:
        yield candidate("torch fp16 + compile + CUDA graphs, attention fused", (GpuConfig(
            dtype="fp16", compile="reduce-overhead", fused_attention=True, min_cosine=0.0),), "torch", "fp16",
            cost=3)
    from slimforge.techniques.quantize.torch_fp8 import Fp8Config
    from slimforge.techniques.quantize.torch_int8_gpu import Int8GpuConfig

    # FP8 GEMMs through torch._scaled_mm, activations quantized by one compiled kernel (1.12x bf16 on a 4096-wide
    # MLP on an H200; torchao's float8 ran at 0.53x there). Compiled whole, Inductor fuses the quantization into the
    # op before; CUDA graphs for the launch-bound small batches. Kept only where measured faster.
    yield candidate("torch fp8 rowwise", (Fp8Config(min_cosine=0.0),), "torch", "fp8", cost=4)
    yield candidate("torch fp8 rowwise + compile + CUDA graphs", (Fp8Config(min_cosine=0.0), GpuConfig(
        dtype="keep", compile="reduce-overhead", fused_attention=attention, min_cosine=0.0)), "torch", "fp8", cost=5)
    if not attention:  # H200, ViT-B/16: its compile ran past 370 s without finishing (a search's whole budget)
        yield candidate("torch int8 dynamic (torchao) + compile", (Int8GpuConfig(min_cosine=0.0), GpuConfig(
            dtype="keep", compile="default", min_cosine=0.0)), "torch", "int8", cost=5)
