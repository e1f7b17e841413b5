"""Where a transformed ONNX graph departs from its float original: every intermediate tensor that both graphs
produce under the same name (quantizers keep the names of the nodes they wrap) is compared on the same inputs, in
the float graph's order; the first one whose error jumps names the node to keep in float."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from slimforge.errors import require


def _all_outputs(path: Path, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[Any]]:
    onnx = require("onnx", extra="onnx")
    ort = require("onnxruntime", extra="onnx")
    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=out))
                existing.add(out)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor it names
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    values = sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values)), list(model.graph.node)


def divergence(reference: Path, candidate: Path, feeds: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per shared float tensor, in the reference's topological order: producing node, op type, relative error."""
    ref, nodes = _all_outputs(Path(reference), feeds)
    cand, cand_nodes = _all_outputs(Path(candidate), feeds)
    by_name = {n.name: n for n in cand_nodes if n.name}
    cand_op = {o: n.op_type for n in cand_nodes for o in n.output}
    rows = []
    for node in nodes:
        twin = by_name.get(node.name) if node.name else None
        if twin is not None and twin.op_type == node.op_type:  # the same node: compare what it outputs, whatever
            pairs = list(zip(node.output, twin.output))        # the quantizer renamed its tensors to
        else:
            pairs = [(o, o) for o in node.output if cand_op.get(o) == node.op_type]
        for out, cand_out in pairs:
            a, b = ref.get(out), cand.get(cand_out)
            if a is None or b is None or np.shape(a) != np.shape(b):
                continue
            if np.asarray(a).dtype.kind != "f" or np.asarray(b).dtype.kind != "f" or not np.size(a):
                continue  # integer tensors (shapes, indices, or the quantized values a quantizer renamed)
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            denom = float(np.linalg.norm(a64))
            err = float(np.linalg.norm(a64 - b64) / denom) if denom > 0 else float(np.linalg.norm(b64))
            rows.append({"node": node.name or out, "op_type": node.op_type, "tensor": out, "rel_error": err})
    return rows


def first_divergence(reference: Path, candidate: Path, feeds: Mapping[str, np.ndarray], *,
                     jump: float = 4.0, floor: float = 0.02) -> dict[str, Any] | None:
    """The first node whose relative error is over ``floor`` and at least ``jump`` times the largest error before it
    (quantization noise grows slowly along a healthy graph; a broken or sensitive layer makes it leap).

    Example:
        >>> # first_divergence("model.onnx", "model-int8.onnx", feeds)["node"]  -> 'conv3'
    """
    rows = divergence(reference, candidate, feeds)
    worst_before = 0.0
    for row in rows:
        if row["rel_error"] > floor and row["rel_error"] >= jump * max(worst_before, floor / jump):
            return {**row, "previous_max": worst_before}
        worst_before = max(worst_before, row["rel_error"])
    return None
