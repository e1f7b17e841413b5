"""Building input feeds from an IO spec: resizing example inputs or synthesising realistic ones."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from slimforge.core.artifact import IOSpec, TensorSpec
from slimforge.errors import ConfigError

_SEQ = re.compile(r"seq|sequence|len|token|time|step", re.I)
_BATCH = re.compile(r"batch|^n$|^N$|unk__|^B$", re.I)


def parse_input_shapes(specs: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``["images:1x3x224x224", "mask:1x16"]`` (or one unnamed ``"1x3x224x224"``, key ``""``).

    Example:
        >>> parse_input_shapes(["x:1x3x8x8"])
        {'x': (1, 3, 8, 8)}
    """
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs or ():
        name, _, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x") if d)
        except ValueError:
            raise ConfigError(f"bad input shape {spec!r}: write NAME:1x3x224x224") from None
        if not shape or any(d <= 0 for d in shape):
            raise ConfigError(f"bad input shape {spec!r}: every dimension must be a positive integer")
        out[name] = shape
    return out


def parse_shape_sets(specs: list[str] | tuple[str, ...] | None) -> list[dict[str, tuple[int, ...]]]:
    """Repeated ``--input-shape`` for one input: several sizes to run at, the first the main one.

    Example:
        >>> parse_shape_sets(["x:1x3x256x256", "x:1x3x512x512"])
        [{'x': (1, 3, 256, 256)}, {'x': (1, 3, 512, 512)}]
    """
    sets: list[dict[str, tuple[int, ...]]] = []
    for spec in specs or ():
        (name, shape), = parse_input_shapes([spec]).items()
        target = next((s for s in sets if name not in s), None)
        if target is None:
            target = {}
            sets.append(target)
        target[name] = shape
    return sets


def concrete_shape(spec: TensorSpec, *, batch: int, seq: int, example: np.ndarray | None = None) -> tuple[int, ...]:
    """Choose a concrete shape for ``spec``: named dims get the batch or sequence size, others the example's size."""
    shape: list[int] = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0 or (isinstance(dim, str) and _BATCH.search(dim)):
            shape.append(batch)
        elif (isinstance(dim, str) and _SEQ.search(dim)) or (axis == 1 and spec.dtype.startswith("int")):
            shape.append(seq)
        elif example is not None and example.ndim == len(spec.shape):
            shape.append(int(example.shape[axis]))
        else:
            shape.append(seq if spec.dtype.startswith("int") else 32)
    return tuple(shape)


def synthesize(io: IOSpec, *, batch: int = 1, seq: int = 16, examples: Mapping[str, np.ndarray] | None = None,
               meta: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic random feeds for every input: token ids within the vocabulary, masks of ones, images ~N(0, 1).

    Example:
        >>> io = IOSpec(inputs=(TensorSpec("input_ids", ("batch", "seq"), "int64"),))
        >>> synthesize(io, batch=2, seq=5)["input_ids"].shape
        (2, 5)
    """
    rng = np.random.default_rng(seed)
    examples = examples or {}
    vocab = int((meta or {}).get("vocab_size") or 1000)
    feeds: dict[str, np.ndarray] = {}
    for spec in io.inputs:
        example = examples.get(spec.name)
        shape = concrete_shape(spec, batch=batch, seq=seq, example=example)
        feeds[spec.name] = _values(spec, shape, rng, vocab)
    return feeds


_STATE = re.compile(r"state|hidden|^h0?$|^c0?$|^h_|^c_|cache|past|memory|carry", re.I)
_RATE = re.compile(r"sample_?rate|^sr$|sampling", re.I)
_AUDIO = re.compile(r"audio|wave|pcm|signal|speech|frames?$", re.I)
_IMAGE = re.compile(r"image|img|pixel|input_1|^x$|^input$|^data$|images", re.I)


def _values(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, vocab: int) -> np.ndarray:
    """Values that look like what the input means, read from its name, dtype and shape: token ids (in the
    vocabulary), masks of ones, segment ids of zeros, positions; RNN/KV state as zeros; a sample rate of 16 kHz;
    audio as a few tones with noise; images in [0, 1]; other floats ~N(0, 1)."""
    name = spec.name.lower()
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    if _RATE.search(name):
        return np.full(shape, 16000, dtype=dtype)
    if _STATE.search(name) and not ("mask" in name):
        return np.zeros(shape, dtype=dtype)
    if len(shape) == 0:  # other scalars: a neutral 1
        return np.ones(shape, dtype=dtype)
    if np.issubdtype(dtype, np.floating) and _AUDIO.search(name):
        t = np.arange(shape[-1], dtype=np.float64) / 16000.0
        tones = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 440.0, 1000.0)) / 3.0
        return (0.3 * np.broadcast_to(tones, shape) + 0.01 * rng.standard_normal(shape)).astype(dtype)
    if np.issubdtype(dtype, np.floating) and len(shape) == 4 and shape[1] in (1, 3, 4) and _IMAGE.search(name):
        return rng.random(shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        if "mask" in name:
            return np.ones(shape, dtype=dtype)
        if "type" in name or "segment" in name:
            return np.zeros(shape, dtype=dtype)
        if "position" in name:
            return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
        low = min(100, vocab // 2)
        return rng.integers(low, max(low + 1, vocab), size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def batch_axis(spec: TensorSpec) -> int | None:
    """The axis an input's examples are stacked on: the first dimension named like a batch, else a dynamic
    axis 0; None for scalars and fixed shapes (a sample rate: the same for every example)."""
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, str) and _BATCH.search(dim):
            return axis
    if spec.shape and not (isinstance(spec.shape[0], int) and spec.shape[0] > 0):
        return 0
    return None


def take(feeds: Mapping[str, np.ndarray], index: Any, io: IOSpec | None = None) -> dict[str, np.ndarray]:
    """Examples ``index`` (a slice or index array) of every input, along each input's batch axis; inputs without
    one (a scalar rate) are passed whole."""
    axes = {t.name: batch_axis(t) for t in io.inputs} if io is not None else {}
    n = len(next((v for v in feeds.values() if np.ndim(v)), [0]))
    out = {}
    for name, v in feeds.items():
        axis = axes.get(name, 0 if np.ndim(v) and len(v) == n else None) if io is not None else (
            0 if np.ndim(v) and len(v) == n else None)
        out[name] = v if axis is None or np.ndim(v) <= axis else np.take(v, np.arange(v.shape[axis])[index], axis)
    return out


def fillable(spec: TensorSpec) -> bool:
    """An input data files may leave out: a recurrent state (zeros) or a sample rate (16 kHz)."""
    name = spec.name.lower()
    return bool(_RATE.search(name) or (_STATE.search(name) and "mask" not in name))


def state_pairs(io: IOSpec) -> dict[str, int]:
    """Recurrent state: each input that looks like a state (by name) paired with the index of the output that
    carries its next value (same rank and fixed dims; the output's name contains the input's, or is a state too).

    Example:
        >>> io = IOSpec(inputs=(TensorSpec("x", ("b", 8), "float32"), TensorSpec("state", ("b", 4), "float32")),
        ...             outputs=(TensorSpec("y", ("b", 2), "float32"), TensorSpec("state_out", ("b", 4), "float32")))
        >>> state_pairs(io)
        {'state': 1}
    """
    pairs: dict[str, int] = {}
    for spec in io.inputs:
        if not _STATE.search(spec.name.lower()):
            continue
        fixed = [d for d in spec.shape[1:] if isinstance(d, int)]
        for j, out in enumerate(io.outputs):
            same = len(out.shape) == len(spec.shape) and [d for d in out.shape[1:] if isinstance(d, int)] == fixed
            named = spec.name.lower() in out.name.lower() or _STATE.search(out.name.lower())
            if same and named and j not in pairs.values():
                pairs[spec.name] = j
                break
    return pairs
