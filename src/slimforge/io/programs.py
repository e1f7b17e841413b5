"""``torch.export`` programs (``.pt2``) as modules that every technique can edit, and modules written back as programs.

A program is unflattened (``torch.export.unflatten``): the module hierarchy comes back (``encoder.layer.0`` ...),
each submodule running its part of the graph. A submodule whose graph is one call of a layer op (``linear``,
``conv1d/2d/3d``, ``batch_norm`` in eval mode, ``layer_norm``, ``embedding``) is replaced by the ``torch.nn`` layer
holding the same parameters, so pruning, fusion, low-rank factorization, quantization and distillation find the
layers they work on. Structural edits that change a shape the graph fixed (a ``view`` to a constant size) cannot
work on a program; the technique's own check then fails and says so.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from io import StringIO
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import fx, nn

from slimforge.core.artifact import IOSpec
from slimforge.torch_utils import outputs_to_list, set_training

log = logging.getLogger(__name__)

_aten = torch.ops.aten
_KEPT_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn")


def _arg(node: fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _linear(node: fx.Node, p: Callable[[Any], Any]) -> nn.Module:
    w = p(node.args[1])
    layer = nn.Linear(w.shape[1], w.shape[0], bias=_arg(node, 2, "bias", None) is not None, device="meta")
    return _assign(layer, weight=w, bias=p(_arg(node, 2, "bias", None)))


def _conv(node: fx.Node, p: Callable[[Any], Any]) -> nn.Module:
    w, groups = p(node.args[1]), _arg(node, 6, "groups", 1)
    cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[w.dim()]
    layer = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_arg(node, 3, "stride", 1),
                padding=_arg(node, 4, "padding", 0), dilation=_arg(node, 5, "dilation", 1), groups=groups,
                bias=_arg(node, 2, "bias", None) is not None, device="meta")
    return _assign(layer, weight=w, bias=p(_arg(node, 2, "bias", None)))


def _batch_norm(node: fx.Node, p: Callable[[Any], Any]) -> nn.Module | None:
    x = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(getattr(x, "ndim", 0))
    w, b, mean, var = (p(a) for a in node.args[1:5])
    if cls is None or node.args[5] or w is None or b is None or mean is None or var is None:
        return None  # training-mode or non-affine norms stay as graphs
    layer = cls(w.shape[0], eps=node.args[7], momentum=node.args[6], device="meta")
    layer.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    return _assign(layer, weight=w, bias=b, running_mean=mean, running_var=var)


def _layer_norm(node: fx.Node, p: Callable[[Any], Any]) -> nn.Module | None:
    w, b = p(_arg(node, 2, "weight", None)), p(_arg(node, 3, "bias", None))
    if w is None:
        return None
    layer = nn.LayerNorm(tuple(node.args[1]), eps=_arg(node, 4, "eps", 1e-5), bias=b is not None, device="meta")
    return _assign(layer, weight=w, bias=b)


def _embedding(node: fx.Node, p: Callable[[Any], Any]) -> nn.Module:
    w, pad = p(node.args[0]), _arg(node, 2, "padding_idx", -1)
    layer = nn.Embedding(w.shape[0], w.shape[1], padding_idx=None if pad < 0 else pad, device="meta")
    return _assign(layer, weight=w)


# the layer op, the argument that is the layer's input, the builder
_LAYERS = {_aten.linear.default: (0, _linear), _aten.conv1d.default: (0, _conv), _aten.conv2d.default: (0, _conv),
           _aten.conv3d.default: (0, _conv), _aten.batch_norm.default: (0, _batch_norm),
           _aten.layer_norm.default: (0, _layer_norm), _aten.embedding.default: (1, _embedding)}


def _assign(layer: nn.Module, **tensors: Any) -> nn.Module:
    for name, t in tensors.items():
        if t is not None:
            setattr(layer, name, t)
    return layer


def layer_for(sub: nn.Module) -> nn.Module | None:
    """The ``torch.nn`` layer equivalent to an unflattened submodule whose graph is one layer op, else None."""
    graph = getattr(sub, "graph", None)
    if not isinstance(graph, fx.Graph):
        return None
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op not in ("placeholder", "get_attr", "output")]
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(calls) != 1 or len(inputs) != 1 or calls[0].target not in _LAYERS:
        return None
    node, (input_index, build) = calls[0], _LAYERS[calls[0].target]
    if node.args[input_index] is not inputs[0] or nodes[-1].args[0] is not node:
        return None

    def param(arg: Any) -> Any:
        if arg is None:
            return None
        if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
            raise LookupError(arg)
        return getattr(sub, arg.target)

    try:
        layer = build(node, param)
    except (LookupError, TypeError, ValueError, KeyError, AttributeError):
        return None
    if layer is None or not all(isinstance(t, nn.Parameter) for t in layer.parameters()) or any(
            t.is_meta for t in [*layer.parameters(), *layer.buffers()]):
        return None
    return layer


def editable_module(program: Any, examples: Mapping[str, np.ndarray]) -> tuple[nn.Module | None, str]:
    """An unflattened, editable module equivalent to ``program`` on ``examples`` (None and the reason when it cannot
    be made one)."""
    try:
        with contextlib.redirect_stdout(StringIO()):  # torch 2.13's unflatten prints a debugging line per node
            module = torch.export.unflatten(program)
    except Exception as exc:  # unflatten's limits: the flat program still runs
        return None, f"torch.export.unflatten failed: {str(exc).splitlines()[0][:200]}"
    replaced = 0
    for name, sub in list(module.named_modules()):
        layer = layer_for(sub) if name else None
        if layer is not None:
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, layer)
            replaced += 1
    for sub in module.modules():
        if isinstance(getattr(sub, "graph", None), fx.Graph):
            _prepare(sub)
    module.eval()
    args = [torch.from_numpy(np.ascontiguousarray(v)) for v in examples.values()]
    try:
        with torch.inference_mode():
            want, got = outputs_to_list(program.module()(*args)), outputs_to_list(module(*args))
    except Exception as exc:
        return None, f"the unflattened module does not run: {str(exc).splitlines()[0][:200]}"
    if len(want) != len(got) or not all(a.shape == b.shape and torch.allclose(a, b, atol=1e-6, rtol=1e-5)
                                        for a, b in zip(want, got)):
        return None, "the unflattened module does not reproduce the program's outputs"
    log.debug("unflattened a program: %d submodules made torch.nn layers", replaced)
    return module, ""


def _prepare(sub: nn.Module) -> None:
    """Drop the trace's fake tensors from a submodule's graph (symbolic shapes: not needed, and they block deepcopy)
    and run it with generated code, 2-3x faster than ``fx.Interpreter`` (a node named ``self``, as BERT's
    ``attention.self``, is renamed first: the generated code would shadow its module)."""
    for node in sub.graph.nodes:
        node.meta = {k: v for k, v in node.meta.items() if k in _KEPT_META}
    clashes = [n for n in sub.graph.nodes if n.name == "self"]
    if clashes and not all(hasattr(n, "_rename") for n in clashes):
        return  # stays on the interpreter
    for node in clashes:
        node._rename("self_")
    if clashes and hasattr(sub, "finalize"):
        sub.finalize()
    if hasattr(sub, "_run_with_interpreter"):
        sub._run_with_interpreter = False


def export_program(module: nn.Module, examples: Mapping[str, np.ndarray], io: IOSpec) -> Any:
    """``torch.export`` a module (eval mode) with the axes ``io`` names dynamic kept dynamic. Inputs shorter than 2 on
    a dynamic axis are repeated to 2 for the trace (torch.export specialises sizes 0 and 1)."""
    module = copy.deepcopy(module)
    set_training(module, False)
    args, shapes, dynamic = [], torch.export.ShapesCollection(), False
    for spec, value in zip(io.inputs, examples.values()):
        axes = spec.dynamic_axes()
        for axis in axes:
            if value.shape[axis] < 2:
                value = np.repeat(value, 2, axis=axis)
        t = torch.from_numpy(np.ascontiguousarray(value))
        args.append(t)
        if axes:
            shapes[t] = {a: torch.export.Dim.AUTO for a in axes}
            dynamic = True
    return torch.export.export(module, tuple(args), dynamic_shapes=shapes if dynamic else None, strict=False)
