"""Per-layer profile of an ONNX or OpenVINO model: ONNX Runtime's session profiling (per-node kernel times and the
shapes each node ran with) or OpenVINO's performance counters (per executed node, fused nodes included).

Nodes are grouped into the source module they came from, where the exporter kept its scope: the TorchScript exporter
names nodes by module path (``/encoder/layer.0/attention/self/query/MatMul``), the dynamo exporter records
``pkg.torch.onnx.name_scopes``. So a user sees ``encoder.layer.0.attention.self.query``, not a list of MatMuls.
FLOPs count what ``FlopCounterMode`` counts for a torch model (matrix products and convolutions, 2 per
multiply-add, no bias or elementwise work), so the totals of a model and its export agree.
"""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from slimforge.bench.compare import compute_call
from slimforge.bench.profile import LayerProfile
from slimforge.bench.timing import BenchSpec
from slimforge.core.artifact import Artifact

GRAPH = "(graph)"
# products with no formula here (int4 weights, fused attention, transposed convolutions, einsum): a graph holding
# them gets no FLOPs total rather than a partial one
UNCOUNTED_OPS = frozenset({"MatMulNBits", "Attention", "MultiHeadAttention", "QAttention", "GroupQueryAttention",
                           "ConvTranspose", "Einsum", "QOrderedAttention", "PackedAttention"})
MATMUL_OPS = {"MatMul": 0, "FusedMatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0, "DynamicQuantizeMatMul": 0,
           "MatMulIntegerToFloat": 0, "Gemm": 0, "FusedGemm": 0}
CONV_OPS = {"Conv": 1, "FusedConv": 1, "ConvInteger": 1, "QLinearConv": 3, "NhwcConv": 1, "Convolution": 1,
         "GroupConvolution": 1}


def scope_of(node_name: str) -> str:
    """The module path in a TorchScript-exporter node name.

    Example:
        >>> scope_of("/encoder/layer.0/attention/self/query/MatMul")
        'encoder.layer.0.attention.self.query'
        >>> scope_of("/features/features.0/Conv"), scope_of("Conv_12")
        ('features.0', '(graph)')
    """
    if not node_name.startswith("/"):
        return GRAPH
    parts = [p for p in node_name.split("/")[1:-1] if p]
    path: list[str] = []
    for p in parts:  # a container's child is named "<container>.<index>", its parent component repeated
        if path and p.startswith(path[-1] + "."):
            path[-1] = p
        else:
            path.append(p)
    return ".".join(path) or GRAPH


def onnx_scopes(path: Path) -> dict[str, str]:
    """Node (and output) name -> module path from the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata,
    where present."""
    import onnx

    out: dict[str, str] = {}
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - no scopes is a fine answer
        return out
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    parts = [s for s in ast.literal_eval(prop.value)[:-1] if s]  # the last one names the op
                except (ValueError, SyntaxError):
                    continue
                if parts:  # also by output name: ONNX Runtime names some fused nodes after their output
                    for key in (node.name, *node.output):
                        out[key] = scope_of("/" + "/".join(parts) + "/op")
    return out


def node_flops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """FLOPs of one node from its shapes (matrix products and convolutions; 0 for the rest).

    Example:
        >>> node_flops("MatMul", [[2, 8, 16], [16, 4]], [[2, 8, 4]])
        2048.0
    """
    if not outputs or not inputs:
        return 0.0
    out = math.prod(outputs[0])
    if op in MATMUL_OPS:
        a = inputs[MATMUL_OPS[op]]
        if op in ("Gemm", "FusedGemm"):
            m = outputs[0][0] if outputs[0] else 1
            k = math.prod(a) // max(m, 1)
        else:
            k = a[-1] if a else 0
        return 2.0 * out * k
    if op in CONV_OPS and len(inputs) > CONV_OPS[op]:
        w = inputs[CONV_OPS[op]]
        per_out = math.prod(w[2:]) if op == "GroupConvolution" else math.prod(w[1:])
        return 2.0 * out * per_out
    return 0.0


def _shapes(entries: Any) -> list[list[int]]:
    return [list(next(iter(e.values()))) for e in entries or [] if isinstance(e, dict) and e]


def _group(per_run: list[list[dict[str, Any]]]) -> list[LayerProfile]:
    """Nodes grouped by module scope; a layer's time is the median over the runs of its nodes' summed time, its
    FLOPs, sizes and node list those of one run."""
    first: dict[str, list[dict[str, Any]]] = {}
    for n in per_run[0]:
        first.setdefault(n["scope"], []).append(n)
    ms: dict[str, list[float]] = {scope: [] for scope in first}
    for nodes in per_run:
        acc = dict.fromkeys(first, 0.0)
        for n in nodes:
            acc[n["scope"]] = acc.get(n["scope"], 0.0) + n["us"] / 1000.0
        for scope in first:
            ms[scope].append(acc[scope])
    layers = []
    for scope, ns in first.items():
        layers.append(LayerProfile(
            name=scope, kind="+".join(sorted({n["op"] for n in ns}))[:60], self_ms=float(np.median(ms[scope])),
            calls=len(ns), flops=sum(n["flops"] for n in ns) or None,
            params=sum(n.get("params", 0) for n in ns) or None,
            activation_bytes=sum(n.get("out_bytes", 0) for n in ns) or None,
            bytes_moved=sum(n.get("moved", 0) for n in ns) or None, nodes=tuple(sorted({n["name"] for n in ns}))))
    return layers


def _ort_runs(trace: Path, scopes: Mapping[str, str], runs: int) -> list[list[dict[str, Any]]]:
    """The trace's nodes, run by run (the first, allocating run dropped), each run with one more entry: the time
    ONNX Runtime spent in the run outside any kernel (its ``model_run`` minus the kernels: scheduling, allocation,
    copies), as the layer ``(runtime overhead)``."""
    events = json.loads(trace.read_text())
    nodes = _ort_nodes(events, scopes)
    totals = [float(e.get("dur", 0)) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    per = len(nodes) // (runs + 1)
    if not per:
        return [nodes]
    out = []
    for i in range(runs):
        chunk = nodes[per * (i + 1): per * (i + 2)]
        if len(totals) == runs + 1:
            rest = max(totals[i + 1] - sum(n["us"] for n in chunk), 0.0)
            chunk = chunk + [{"name": "model_run", "op": "session", "us": rest, "flops": 0.0,
                              "scope": "(runtime overhead)"}]
        out.append(chunk)
    return out


def _scope(name: str, scopes: Mapping[str, str]) -> str:
    """A node's module: from the exporter's metadata (also for the nodes ONNX Runtime renamed by suffixing the
    original name, e.g. ``node_conv2d_nchwc``), else from the name itself."""
    probe = name
    for _ in range(3):
        if probe in scopes:
            return scopes[probe]
        if "_" not in probe:
            break
        probe = probe.rsplit("_", 1)[0]
    return scope_of(name)


def _ort_nodes(events: list[dict[str, Any]], scopes: Mapping[str, str]) -> list[dict[str, Any]]:
    nodes = []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        name = e["name"][: -len("_kernel_time")].removeprefix("fused ")  # ORT names some fusions "fused <node>"
        ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
        op = str(args.get("op_name", "?"))
        nodes.append({"name": name, "op": op, "us": float(e.get("dur", 0)), "flops": node_flops(op, ins, outs),
                      "scope": _scope(name, scopes), "params": int(args.get("parameter_size", 0)),
                      "out_bytes": int(args.get("output_size", 0)),
                      "moved": int(args.get("parameter_size", 0)) + int(args.get("activation_size", 0))
                      + int(args.get("output_size", 0))})
    return nodes


def ov_op_costs(art: Artifact, feeds: Mapping[str, np.ndarray]
                ) -> tuple[dict[str, tuple[float, int, int]], dict[str, list[int]]]:
    """The OpenVINO model reshaped to the feeds' static shapes: per matrix product and convolution (by friendly
    name) its FLOPs, bytes moved (inputs, weights, outputs) and output bytes; and every op's static output shape."""
    import openvino as ov

    model = ov.Core().read_model(str(art.path))
    model.reshape({p.get_any_name(): ov.PartialShape(list(a.shape)) for p, a in zip(model.inputs, feeds.values())})
    cost: dict[str, tuple[float, int, int]] = {}  # name -> (flops, bytes moved, output bytes)
    outs_of: dict[str, list[int]] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if op.get_output_size() and op.get_output_partial_shape(0).is_static:
            outs_of[op.get_friendly_name()] = list(op.get_output_shape(0))
        if kind not in ("MatMul", "Convolution", "GroupConvolution"):
            continue
        ins = [list(op.input(i).get_shape()) for i in range(op.get_input_size())]
        outs = [list(op.output(0).get_shape())]
        item = op.get_output_element_type(0).size
        if kind == "MatMul":
            a = ins[0]
            k = (a[-2] if op.get_attributes().get("transpose_a") and len(a) > 1 else a[-1]) if a else 0
            f = 2.0 * math.prod(outs[0]) * k
        else:
            f = node_flops(kind, ins, outs)
        out_b = math.prod(outs[0]) * item
        cost[op.get_friendly_name()] = (f, sum(math.prod(i) for i in ins) * item + out_b, out_b)
    return cost, outs_of


def _ov_costs(sess: Any, art: Artifact, feeds: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per executed OpenVINO node: the FLOPs and bytes moved of the original matrix products and convolutions fused
    into it (``ov_op_costs``), and the original ops' names (``originalLayersNames``)."""
    cost, outs_of = ov_op_costs(art, feeds)
    out = {}
    for op in sess.compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        raw = rt["originalLayersNames"].value if "originalLayersNames" in rt else ""  # an OVAny
        names = [n.strip() for n in str(raw).split(",") if n.strip()]
        f, moved, out_b = (sum(cost.get(n, (0.0, 0, 0))[i] for n in names) for i in range(3))
        layer_type = str(rt["layerType"].value) if "layerType" in rt else ""
        if not f and layer_type == "FullyConnected" and names and names[0] in outs_of and op.get_input_size() > 1:
            w = op.get_input_partial_shape(1)  # the plugin's MatMul -> FullyConnected keeps only the bias's name
            if w.is_static:
                n_out, k = math.prod(outs_of[names[0]]), list(w.to_shape())[-1]
                rows = n_out // max(list(w.to_shape())[0], 1)
                f, out_b = 2.0 * n_out * k, n_out * 4
                moved = (rows * k + math.prod(list(w.to_shape())) + n_out) * 4
        out[op.get_friendly_name()] = {"flops": f, "moved": moved, "out_bytes": out_b, "names": names}
    return out


def _known_scopes(art: Artifact) -> set[str]:
    """The module scopes of the ONNX graph's node names (what OpenVINO's derived names are matched against)."""
    import onnx

    try:
        model = onnx.load(str(art.path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an OpenVINO IR: no ONNX names
        return set()
    return {scope_of(n.name) for n in model.graph.node} - {GRAPH}


def _longest_scope(names: list[str], known: set[str]) -> str:
    """The longest known module scope that a node's name (or one of its original ops' names) lies under; OpenVINO
    appends its own parts (``/WithoutBiases``, reorders), so the plain rule would take them for modules."""
    best = GRAPH
    for name in names:
        parts = [p for p in name.split("/")[1:] if p] if name.startswith("/") else []
        for i in range(len(parts), 0, -1):
            cand = scope_of("/" + "/".join(parts[:i]) + "/x")
            if cand in known:
                best = cand if len(cand) > len(best) or best == GRAPH else best
                break
    return best if best != GRAPH or not names else scope_of(names[0])


def profile_graph(art: Artifact, runtime: str, feeds: Mapping[str, np.ndarray], *, device: str, runs: int,
                  threads: int | None, spec: BenchSpec) -> tuple[list[LayerProfile], float | None, float, list[str]]:
    """Plain runs (timed) and profiled runs (a second session with the runtime's profiler on) interleaved, so the
    end-to-end latency and the per-node times see the same machine."""
    from slimforge.errors import ConfigError
    from slimforge.runtimes import open_session, ort_spin_off

    if device == "cuda" and runtime == "onnxruntime":
        raise ConfigError("profiling ONNX Runtime on CUDA is not supported: its session profile times kernel "
                          "launches, not kernels; profile the PyTorch model with --runtime torch --device cuda")
    # two sessions take turns: their thread pools must not spin-wait for work, or each slows the other down
    with ort_spin_off():
        plain = open_session(art, runtime, device=device, threads=threads)
        sess: Any = open_session(art, runtime, device=device, threads=threads, profiling=True)
    scopes = onnx_scopes(Path(art.path)) if art.path is not None and str(art.path).endswith(".onnx") else {}
    call = compute_call(plain, feeds)
    for _ in range(max(spec.warmup, 1)):
        call()
    sess.run(feeds)  # the profiling session's first run allocates: dropped below (ORT) or not read (OpenVINO)
    ov = runtime == "openvino"
    costs = _ov_costs(sess, art, feeds) if ov else {}
    known = _known_scopes(art) if ov else set()
    e2e, per_run = [], []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        plain.sync()
        e2e.append((time.perf_counter() - t) * 1000.0)
        sess.run(feeds)
        if ov:
            per_run.append(_ov_nodes(sess, costs, scopes, known))
    if not ov:
        trace = Path(sess.sess.end_profiling())
        try:
            per_run = _ort_runs(trace, scopes, runs)
        finally:
            trace.unlink(missing_ok=True)  # the trace sits in the run's scratch folder: not left behind
    sess.close()
    plain.close()
    layers = _group(per_run)
    uncounted = sorted({n["op"] for n in per_run[0]} & UNCOUNTED_OPS)
    total = 0.0 if uncounted else sum(n["flops"] for n in per_run[0])
    how = ("OpenVINO performance counters (per executed node; FLOPs of the original ops fused into it, from the "
           "model reshaped to the inputs' shapes)" if ov else
           "ONNX Runtime session profiling (per-node kernel times; FLOPs from the shapes each node ran with)")
    note = f"{how}; {runs} profiled runs interleaved with {runs} plain timed runs, per layer the median"
    notes = [note] + ([f"no FLOPs total: no formula for {', '.join(uncounted)}"] if uncounted else [])
    return layers, total or None, float(np.median(e2e)), notes


def _ov_nodes(sess: Any, costs: Mapping[str, dict[str, Any]], scopes: Mapping[str, str],
              known: set[str]) -> list[dict[str, Any]]:
    nodes = []
    for info in sess.request.get_profiling_info():
        if str(info.status).endswith(("NOT_RUN", "OPTIMIZED_OUT")):
            continue
        c = costs.get(info.node_name, {"flops": 0.0, "moved": 0, "out_bytes": 0, "names": []})
        where = next((scopes[n] for n in c["names"] if n in scopes), None) or _longest_scope(
            [info.node_name, *c["names"]], known)
        nodes.append({"name": info.node_name, "op": f"{info.node_type}:{info.exec_type}",
                      "us": info.real_time.total_seconds() * 1e6, "flops": c["flops"], "scope": where,
                      "moved": c["moved"], "out_bytes": c["out_bytes"]})
    return nodes
