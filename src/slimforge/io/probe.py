"""Probing a torch model to find which input and output axes may vary (batch, sequence, height, width)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def infer_dynamic_axes(module: Any, examples: Mapping[str, np.ndarray], base_out: list[np.ndarray] | None = None
                       ) -> tuple[dict[str, dict[int, str]], list[dict[int, str]]]:
    """Find which axes may vary by running the model on probes: batch, then sequence, then height/width.

    An axis is dynamic when the model runs with a different size there; output axes are dynamic where their size
    followed the probe. Returns the input axes by name and the output axes by output index.
    """
    from slimforge.torch_utils import run_module

    if base_out is None:
        base_out = run_module(module, examples)
    in_axes: dict[str, dict[int, str]] = {}
    out_axes: list[dict[int, str]] = [{} for _ in base_out]
    probes: list[tuple[str, dict[str, int]]] = [("batch", {n: 0 for n, v in examples.items() if v.ndim >= 1})]
    seq_inputs = {n: 1 for n, v in examples.items() if v.ndim in (2, 3) and (v.dtype.kind in "iub" or v.ndim == 3)}
    if seq_inputs:
        probes.append(("sequence", seq_inputs))
    img_inputs = {n: 2 for n, v in examples.items() if v.ndim == 4 and v.dtype.kind == "f"}
    for dim_name, extra in (("height", 2), ("width", 3)):
        if img_inputs:
            probes.append((dim_name, {n: extra for n in img_inputs}))
    for dim_name, targets in probes:
        if not targets:
            continue
        # two different growths must both run: one lucky size (e.g. one that pools down to the same shape) is no proof
        try:
            outs = [run_module(module, {n: (_grow(v, targets[n], k) if n in targets else v)
                                        for n, v in examples.items()}) for k in (1, 3)]
        except Exception:
            continue
        out = outs[0]
        if any(len(o) != len(base_out) for o in outs):
            continue
        for n, axis in targets.items():
            in_axes.setdefault(n, {})[axis] = dim_name
        for i, (a, b) in enumerate(zip(base_out, out)):
            for axis, (sa, sb) in enumerate(zip(a.shape, b.shape)):
                if sa != sb:
                    out_axes[i][axis] = dim_name
    return in_axes, out_axes


def _grow(arr: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """The array made ``factor`` times its size longer along ``axis`` (at least 2 longer) by repeating edge values,
    which keeps token ids and masks realistic."""
    n = max(2, arr.shape[axis] * factor)
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (0, n)
    return np.pad(arr, pad, mode="edge")
