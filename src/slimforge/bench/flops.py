"""FLOPs per item of a model, for the roofline figures of every benchmark row (achieved GFLOP/s or GOPS, and the
fraction of the device's peak at the model's precision).

Counted as ``FlopCounterMode`` counts them (matrix products and convolutions, 2 per multiply-add): torch models by
``FlopCounterMode`` itself (plus the CPU flash-attention kernel its registry lacks), ONNX graphs from ONNX shape
inference at the feeds' shapes, OpenVINO IR from the model reshaped to them. ``None`` when the shapes of some
product cannot be known without running the model: a figure is never guessed.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from slimforge.core.artifact import Artifact, Format

log = logging.getLogger(__name__)


def flops_per_item(art: Artifact, feeds: Mapping[str, np.ndarray]) -> float | None:
    """FLOPs of one item (the feeds' total over their batch size), or None where they cannot be counted."""
    try:
        from slimforge.io.synth import batch_axis

        axes = {s.name: batch_axis(s) for s in art.io.inputs}
        sizes = [int(np.shape(v)[axes[k]]) for k, v in feeds.items() if axes.get(k) is not None
                 and np.ndim(v) > axes[k]]
        batch = sizes[0] if sizes else 1
        per_item = _per_item(art, feeds, batch)
        if per_item is None and batch == 1 and art.format is Format.ONNX:  # ONNX's data propagation loses some
            two = {k: np.concatenate([v, v], axis=axes[k]) if axes.get(k) is not None and np.ndim(v) > axes[k]
                   else v for k, v in feeds.items()}  # shapes at batch 1: count at batch 2
            per_item = _per_item(art, two, 2)
    except Exception as exc:  # noqa: BLE001 - a figure we cannot count is left out, never guessed
        log.debug("FLOPs of %s not counted: %s", art.name, exc)
        return None
    return per_item


def _per_item(art: Artifact, feeds: Mapping[str, np.ndarray], batch: int) -> float | None:
    try:
        if art.format is Format.TORCH and art.meta.get("device") != "cuda":
            total = _torch(art, feeds)
        elif art.format is Format.ONNX and art.path is not None:
            total = _onnx(art, feeds)
        elif art.format is Format.OPENVINO and art.path is not None:
            total = _openvino(art, feeds)
        else:
            return None
    except Exception as exc:  # noqa: BLE001 - a figure we cannot count is left out, never guessed
        log.debug("FLOPs of %s not counted: %s", art.name, exc)
        return None
    return total / max(batch, 1) if total else None


def _torch(art: Artifact, feeds: Mapping[str, np.ndarray]) -> float | None:
    import copy

    import torch

    from slimforge.bench.profile_torch import flop_counter

    module = art.handle
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in module.modules()):
        return None  # quantized kernels FlopCounterMode does not count: a partial figure would mislead
    if getattr(module, "training", False):  # never run the user's module in training mode (BatchNorm statistics)
        module = copy.deepcopy(module).eval()
    with flop_counter() as fc, torch.inference_mode():
        module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()])
    return float(fc.get_total_flops())


def _onnx(art: Artifact, feeds: Mapping[str, np.ndarray]) -> float | None:
    import onnx

    from slimforge.bench.profile_onnx import CONV_OPS, MATMUL_OPS, UNCOUNTED_OPS, node_flops

    model = onnx.load(str(art.path), load_external_data=False)
    by_name = dict(zip(art.io.input_names, feeds.values()))
    for inp in model.graph.input:
        if inp.name in by_name:
            dims = inp.type.tensor_type.shape.dim
            for d, n in zip(dims, by_name[inp.name].shape):
                d.ClearField("dim_param")
                d.dim_value = int(n)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0.0
    for node in inferred.graph.node:
        if node.op_type in UNCOUNTED_OPS:
            return None  # compute this counter has no formula for: a partial total would mislead
        if node.op_type not in MATMUL_OPS and node.op_type not in CONV_OPS:
            continue
        ins = [shapes.get(i) for i in node.input if i]
        outs = [shapes.get(o) for o in node.output[:1]]
        need = MATMUL_OPS.get(node.op_type, CONV_OPS.get(node.op_type, 0))
        if outs[0] is None or len(ins) <= need or ins[need] is None:
            return None  # a product whose shapes only a run would tell
        total += node_flops(node.op_type, [s or [] for s in ins], [outs[0]])
    return total


def _openvino(art: Artifact, feeds: Mapping[str, np.ndarray]) -> float:
    from slimforge.bench.profile_onnx import ov_op_costs

    cost, _ = ov_op_costs(art, feeds)
    return sum(f for f, _, _ in cost.values())
