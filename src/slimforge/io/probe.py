"""Probing a torch model to find which input and output axes may vary (batch, sequence, height, width), and how
each varying output axis relates to the input axis it follows (``height``, ``2*height``, ``height/2``, ...)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def infer_dynamic_axes(module: Any, examples: Mapping[str, np.ndarray], base_out: list[np.ndarray] | None = None
                       ) -> tuple[dict[str, dict[int, str]], list[dict[int, str]]]:
    """Find which axes may vary by running the model on probes: batch, then sequence, then height/width.

    An axis is dynamic when the model runs with a different size there; output axes are dynamic where their size
    followed the probe, and are named for what they are, measured over the two growths: ``height`` when equal to
    the input's, ``2*height`` when twice it, ``height/2`` when half (rounded either way), ``height-2`` when a fixed
    offset from it, and ``height_out0_2`` (output 0, axis 2) when the relation is none of these or the axis follows
    several probes (``height*width`` flattened). Returns the input axes by name and the output axes by output index.
    """
    from slimforge.torch_utils import run_module

    if base_out is None:
        base_out = run_module(module, examples)
    in_axes: dict[str, dict[int, str]] = {}
    out_axes: list[dict[int, str]] = [{} for _ in base_out]
    followed: dict[tuple[int, int], int] = {}  # (output, axis) -> how many probes it followed
    for dim_name, targets in _probes(examples):
        # two different growths must both run: one lucky size (e.g. one that pools down to the same shape) is no proof
        grown = [{n: (_grow(v, targets[n], k) if n in targets else v) for n, v in examples.items()} for k in (1, 3)]
        try:
            outs = [run_module(module, feeds) for feeds in grown]
        except Exception:
            continue
        if any(len(o) != len(base_out) for o in outs):
            continue
        for n, axis in targets.items():
            in_axes.setdefault(n, {})[axis] = dim_name
        first, axis_in = next(iter(targets.items()))
        sizes_in = [examples[first].shape[axis_in], *(g[first].shape[axis_in] for g in grown)]
        for i, (a, b, c) in enumerate(zip(base_out, *outs)):
            for axis, sizes_out in enumerate(zip(a.shape, b.shape, c.shape)):
                if len(set(sizes_out)) == 1 or a.ndim != b.ndim or a.ndim != c.ndim:
                    continue
                followed[(i, axis)] = followed.get((i, axis), 0) + 1
                relation = dim_relation(sizes_in, sizes_out, dim_name)
                fresh = f"{dim_name}_out{i}_{axis}" if followed[(i, axis)] == 1 else f"out{i}_{axis}"
                out_axes[i][axis] = relation if relation and followed[(i, axis)] == 1 else fresh
    return in_axes, out_axes


def dim_relation(sizes_in: Sequence[int], sizes_out: Sequence[int], name: str) -> str | None:
    """The name of an output dimension measured at several input sizes, as an expression of the input's ``name``:
    ``a*name+b`` for whole ``a >= 1`` and ``b``, or ``name/k`` when the output is the input divided by ``k``
    (rounded down or up at every size); None when neither fits.

    Example:
        >>> dim_relation([24, 48, 96], [48, 96, 192], "height"), dim_relation([7, 14, 28], [4, 7, 14], "width")
        ('2*height', 'width/2')
        >>> dim_relation([32, 64, 128], [30, 62, 126], "height"), dim_relation([32, 64, 128], [5, 6, 9], "height")
        ('height-2', None)
    """
    x, y = [int(v) for v in sizes_in], [int(v) for v in sizes_out]
    if len(set(x)) < 2 or len(x) != len(y):
        return None
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    if dy > 0 and dy % dx == 0:
        a = dy // dx
        b = y[0] - a * x[0]
        if all(yi == a * xi + b for xi, yi in zip(x, y)):
            return (f"{a}*" if a > 1 else "") + name + (f"{b:+d}" if b else "")
    if 0 < dy < dx:
        k = round(dx / dy)
        if k >= 2 and all(yi in (xi // k, -(-xi // k)) for xi, yi in zip(x, y)):
            return f"{name}/{k}"
    return None


def _probes(examples: Mapping[str, np.ndarray]) -> list[tuple[str, dict[str, int]]]:
    """(dimension name, {input: axis}) for each probe, in order: batch, sequence, height, width."""
    probes: list[tuple[str, dict[str, int]]] = [("batch", {n: 0 for n, v in examples.items() if v.ndim >= 1})]
    seq_inputs = {n: 1 for n, v in examples.items() if v.ndim in (2, 3) and (v.dtype.kind in "iub" or v.ndim == 3)}
    if seq_inputs:
        probes.append(("sequence", seq_inputs))
    img_inputs = {n: 2 for n, v in examples.items() if v.ndim == 4 and v.dtype.kind == "f"}
    if img_inputs:
        probes.append(("height", img_inputs))
        probes.append(("width", {n: 3 for n in img_inputs}))
    return [(name, targets) for name, targets in probes if targets]


def _grow(arr: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """The array made ``factor`` times its size longer along ``axis`` (at least 2 longer) by repeating edge values,
    which keeps token ids and masks realistic."""
    n = max(2, arr.shape[axis] * factor)
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (0, n)
    return np.pad(arr, pad, mode="edge")
