"""Turning a slimforge dataset into tensors for the trainer: inputs, and labels or teacher targets."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import TensorDataset

from slimforge.core.artifact import Artifact
from slimforge.errors import DataError
from slimforge.io.data import Batch, Dataset


def supervised_loss(has_labels: bool):
    """``loss(model, batch)`` for batches of ``(*inputs, target)``: cross-entropy on labels, else MSE to the
    target outputs (a teacher's, e.g. the FP32 model's)."""

    def loss(model: torch.nn.Module, batch):
        out = model(*batch[:-1])
        out = out[0] if isinstance(out, (tuple, list)) else out
        if has_labels:
            return torch.nn.functional.cross_entropy(out, batch[-1])
        return torch.nn.functional.mse_loss(out, batch[-1])

    return loss


def mask_index(art: Artifact) -> int | None:
    """The position of the ``attention_mask`` input (zeros mark padding tokens), or None when there is none."""
    names = art.io.input_names
    return names.index("attention_mask") if "attention_mask" in names else None


def _pad_to(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate batches; token batches padded to different lengths are right-padded with zeros (PAD, mask 0)."""
    if len({a.shape[1:] for a in arrays}) > 1 and all(a.ndim == 2 and a.dtype.kind in "iub" for a in arrays):
        width = max(a.shape[1] for a in arrays)
        arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
    try:
        return np.concatenate(arrays)
    except ValueError as exc:
        raise DataError(f"training examples must share one shape (or be token batches): {exc}") from exc


def spread_batches(data: Dataset, limit: int | None, batch_size: int = 64) -> Iterator[Batch]:
    """Batches of at most ``limit`` examples spread evenly over the whole of ``data`` (every k-th example), not its
    first ``limit``: data stored class by class (an image folder, a per-class .npz) would otherwise give only the
    first classes.

    Example:
        >>> from slimforge.io.data import Batch
        >>> class D:
        ...     def __len__(self): return 10
        ...     def batches(self, n, *, limit=None):
        ...         yield Batch({"x": np.arange(10)[:, None]}, np.arange(10))
        >>> [b.labels.tolist() for b in spread_batches(D(), 4)]
        [[0, 2, 5, 7]]
    """
    try:
        n = len(data)
    except TypeError:
        n = None
    if limit is None or n is None or n <= limit:
        yield from data.batches(batch_size, limit=limit)
        return
    keep = np.zeros(n, dtype=bool)
    keep[(np.arange(limit) * n) // limit] = True
    start = 0
    for batch in data.batches(batch_size):
        rows = len(next(iter(batch.feeds.values())))
        mask = keep[start:start + rows]
        start += rows
        if len(mask) < rows:
            mask = np.concatenate([mask, np.zeros(rows - len(mask), dtype=bool)])
        if mask.any():
            yield Batch({k: v[mask] for k, v in batch.feeds.items()},
                        None if batch.labels is None else np.asarray(batch.labels)[mask])


def collect(art: Artifact, data: Dataset | None, *, limit: int | None,
            teacher: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
            ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Input tensors, the teacher's outputs (when a teacher is given) and the labels (when every batch has them);
    at most ``limit`` examples, spread over the whole data (``spread_batches``)."""
    if data is None:
        raise DataError("this step trains: pass data=... (an image folder, .npz with labels, a text file, ...)")
    inputs: list[list[np.ndarray]] = [[] for _ in art.io.inputs]
    labels: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for batch in spread_batches(data, limit):
        for i, name in enumerate(art.io.input_names):
            inputs[i].append(batch.feeds[name])
        if batch.labels is not None:
            labels.append(batch.labels)
        if teacher is not None:
            targets.append(teacher(batch.feeds))
    if not inputs[0]:
        raise DataError(f"{data.name}: no training examples")
    tensors = [torch.from_numpy(_pad_to(parts)) for parts in inputs]
    target = torch.from_numpy(_pad_to(targets)) if targets else None
    label = torch.from_numpy(np.concatenate(labels)) if labels and len(labels) == len(inputs[0]) else None
    return tensors, target, label


def tensor_dataset(art: Artifact, data: Dataset | None, *, limit: int | None,
                   teacher: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
                   require_labels: bool = False) -> tuple[TensorDataset, bool]:
    """``(*inputs, target)`` tensors: the labels when every batch has them, else ``teacher(feeds)`` outputs.

    Returns the dataset and whether the targets are labels.
    """
    tensors, target, label = collect(art, data, limit=limit, teacher=None if require_labels else teacher)
    if label is not None:
        return TensorDataset(*tensors, label), True
    if target is None:
        raise DataError(f"{data.name}: has no labels (sub-folders of images, or 'labels' in .npz/CSV)")
    return TensorDataset(*tensors, target), False
