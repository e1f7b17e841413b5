"""Metric values and the pure functions that compute them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Metric:
    """A measured value with its unit and direction.

    Example:
        >>> Metric(0.98, "ratio", True).to_dict()
        {'value': 0.98, 'unit': 'ratio', 'higher_is_better': True}
    """

    value: float
    unit: str = ""
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "higher_is_better": self.higher_is_better}


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)


def cosine_similarity(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per-example cosine between flattened outputs (1.0 where both are all zero).

    Example:
        >>> float(cosine_similarity(np.ones((2, 3)), np.ones((2, 3))).mean())
        1.0
    """
    a, b = _rows(ref), _rows(cand)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    out = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-30))
    return np.clip(out, -1.0, 1.0)


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical).

    Example:
        >>> round(sqnr_db(np.array([1.0, 1.0]), np.array([1.0, 1.1])), 1)
        23.0
    """
    ref = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(cand, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return float("inf")
    return float(10.0 * np.log10(max(signal, 1e-300) / noise))


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy of class scores ``[N, C]`` against integer labels ``[N]``.

    Example:
        >>> accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
        0.5
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, kth=k - 1, axis=-1)[:, :k]
    return float(np.mean([labels[i] in top[i] for i in range(len(labels))]))


def neighbour_agreement(ref: np.ndarray, cand: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each item's top-k cosine neighbours (itself excluded) under the two embeddings.

    1.0 means retrieval over these items would return the same neighbours.

    Example:
        >>> e = np.random.default_rng(0).standard_normal((20, 8))
        >>> neighbour_agreement(e, e, k=5)
        1.0
    """
    def topk(e: np.ndarray) -> np.ndarray:
        e = _rows(e)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :kk]

    n = _rows(ref).shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return float("nan")
    a, b = topk(ref), topk(cand)
    return float(np.mean([len(set(a[i]) & set(b[i])) / kk for i in range(n)]))


def fidelity_metrics(ref_outputs: list[np.ndarray], cand_outputs: list[np.ndarray]) -> dict[str, float]:
    """Max abs error, mean/min cosine and SQNR over every output."""
    cos = np.concatenate([cosine_similarity(r, c) for r, c in zip(ref_outputs, cand_outputs)])
    ref_all = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in ref_outputs])
    cand_all = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in cand_outputs])
    return {
        "max_abs": float(np.max(np.abs(ref_all - cand_all))) if ref_all.size else 0.0,
        "cosine": float(cos.mean()) if cos.size else 1.0,
        "min_cosine": float(cos.min()) if cos.size else 1.0,
        "sqnr_db": sqnr_db(ref_all, cand_all),
    }
