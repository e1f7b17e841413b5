"""Model inspection: IO spec, opset, producer, op histogram, parameter count, size."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.artifact import Artifact, Format, IOSpec
from slimforge.errors import require
from slimforge.io.onnx_file import onnx_io


def onnx_info(path: Path) -> dict[str, Any]:
    """Everything ``slimforge info`` shows for an ONNX file."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path), load_external_data=False)
    ops: collections.Counter[str] = collections.Counter()
    _count_ops(model.graph, ops)
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    constant_weights = sum(1 for n in model.graph.node if n.op_type == "Constant")
    domains = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    io = onnx_io(path)
    from slimforge.convert.normalize import computed_weights

    computed = computed_weights(model)
    dynamic = sorted({d for t in (*io.inputs, *io.outputs) for d in t.shape if isinstance(d, str) and d})
    return {
        "format": "onnx",
        "path": str(path),
        "family": guess_family(ops, io),
        "weights_are_initializers": not computed,
        "computed_weights": computed[:20],
        "dynamic_dims": dynamic,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [t.to_dict() for t in io.inputs],
        "outputs": [t.to_dict() for t in io.outputs],
        "parameters": params,
        "initializers": len(model.graph.initializer),
        "constant_nodes": constant_weights,
        "external_data": any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer),
        "custom_domains": domains,
        "nodes": sum(ops.values()),
        "op_histogram": dict(ops.most_common()),
    }


def guess_family(ops: collections.Counter[str] | dict[str, int], io: IOSpec) -> str:
    """A guess of the model family from its ops and IO names: ``rnn/stateful``, ``detector``, ``transformer``,
    ``cnn``, ``mlp`` or ``unknown``.

    Example:
        >>> guess_family({"Conv": 20, "Relu": 20, "Gemm": 1}, IOSpec((), ()))
        'cnn'
    """
    import re

    n = collections.Counter(ops)
    names = " ".join(t.name.lower() for t in (*io.inputs, *io.outputs))
    state_io = re.search(r"state|hidden|\bh0\b|\bc0\b|cache|past", names)
    if n["LSTM"] or n["GRU"] or n["RNN"] or state_io:
        return "rnn/stateful"
    conv = n["Conv"] + n["ConvTranspose"]
    if conv and (n["NonMaxSuppression"] or re.search(r"box|detection|anchor", names)
                 or (n["Sigmoid"] and n["Concat"] >= 2 and (n["Reshape"] + n["Transpose"]) >= 2 and len(io.outputs) >= 1
                     and n["GlobalAveragePool"] == 0 and n["Gemm"] == 0)):
        return "detector"
    matmul = n["MatMul"] + n["Gemm"] + n["com.microsoft.Attention"] + n["Attention"]
    if matmul >= 4 and (n["Softmax"] or n["com.microsoft.Attention"]) and (
            n["LayerNormalization"] or n["ReduceMean"] or n["com.microsoft.SkipLayerNormalization"]):
        return "transformer"
    if conv:
        return "cnn"
    if matmul:
        return "mlp"
    return "unknown"


def sensitive_nodes(path: Path, *, depth: int = 1, tensors: bool = False) -> list[str]:
    """Nodes a quantizer should keep in float: every node between the graph outputs and the last ``depth`` compute
    layers (Conv/Gemm/MatMul) on the way to them, those layers included (classifier and detection heads). With
    ``depth=0``: the output tail only (a detector's decode: grids, Sigmoid, Mul/Add, the Concat of pixel
    coordinates with probabilities, which one INT8 scale cannot hold). ``tensors`` adds the nodes' output tensor
    names (OpenVINO names its operations after them)."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    out: list[str] = []
    seen: set[tuple[str, int]] = set()
    stack = [(o.name, 0) for o in model.graph.output]
    while stack:
        tensor, found = stack.pop()
        node = producer.get(tensor)
        if node is None or (node.name, found) in seen:
            continue
        seen.add((node.name, found))
        compute = node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        if compute and found >= depth:
            continue
        if node.name and node.name not in out:
            out.append(node.name)
        if tensors:
            out.extend(o for o in node.output if o and o not in out)
        stack.extend((i, found + (1 if compute else 0)) for i in node.input if i and i in producer)
    return out


def _count_ops(graph: Any, ops: collections.Counter[str]) -> None:
    for node in graph.node:
        ops[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                _count_ops(attr.g, ops)
            for g in attr.graphs:
                _count_ops(g, ops)


def torch_info(art: Artifact) -> dict[str, Any]:
    """Parameter count, FLOPs (``torch.utils.flop_counter``) and module histogram of a torch artifact."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = art.handle
    params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    flops = None
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(*[torch.from_numpy(v) for v in art.examples.values()])
        flops = int(counter.get_total_flops())
    except Exception:  # some TorchScript modules cannot be counted; FLOPs are then unknown
        flops = None
    kinds = collections.Counter(type(m).__name__ for m in module.modules()) if hasattr(module, "modules") else {}
    return {
        "format": art.format.value,
        "path": str(art.path) if art.path else None,
        "inputs": [t.to_dict() for t in art.io.inputs],
        "outputs": [t.to_dict() for t in art.io.outputs],
        "parameters": int(params),
        "flops_per_example_batch": flops,
        "example_shapes": {k: list(v.shape) for k, v in art.examples.items()},
        "module_histogram": dict(collections.Counter(kinds).most_common(20)),
    }


def model_info(art: Artifact) -> dict[str, Any]:
    """Inspect any artifact.

    Example:
        >>> import torch, slimforge
        >>> info = model_info(slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4)))
        >>> info["parameters"]
        10
    """
    if art.format is Format.ONNX:
        info = onnx_info(art.path)  # type: ignore[arg-type]
    elif art.format is Format.OPENVINO:
        info = {"format": "openvino", "path": str(art.path), "inputs": [t.to_dict() for t in art.io.inputs],
                "outputs": [t.to_dict() for t in art.io.outputs]}
    else:
        info = torch_info(art)
    info["name"] = art.name
    info["task"] = art.meta.get("task")
    info["runs_at"] = {k: "x".join(map(str, v.shape)) or "scalar" for k, v in art.examples.items()}
    probe = art.meta.get("dims") or {}
    if probe.get("rules"):  # what probing found: the size each dynamic dimension runs at, and its step
        info["dynamic_sizes"] = {k: (f"{r['size']}" + (f", step {r['step']}" if r.get("step") else ", fixed"))
                                 for k, r in probe["rules"].items()}
    if probe and not probe.get("ok", True):
        info["runs_at_error"] = probe.get("error")
    info["size_mb"] = round(art.size_bytes() / 1e6, 3)
    return info
