"""The held-out share of a distillation set: how it is drawn, and how the trained student is judged on it against
its teacher.

The held-out examples are a seeded random draw (stratified by label when there are labels), never the tail of the
data: data stored class by class (an image folder, a per-class ``.npz``) would otherwise hold out only the last
classes, which the student then never trains on, and early stopping would keep the epoch that does best on those
alone.

The judgement uses the task's metric: with labels, the student's top-1 accuracy against the teacher's on the same
examples; for classifier outputs without labels, top-1 agreement with the teacher (the teacher agrees with itself
100%); for embeddings and other outputs, the mean cosine to the teacher's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from slimforge.core.artifact import Check


def split_indices(n: int, share: float, labels: np.ndarray | None, seed: int) -> tuple[list[int], list[int]]:
    """``(train, heldout)`` indices: ``share`` of ``n`` examples drawn at random (per label when labels are given,
    so that every class is in both parts), at least one held out and one trained on.

    Example:
        >>> train, held = split_indices(10, 0.2, np.repeat([0, 1], 5), seed=0)
        >>> len(held), sorted(int(i) // 5 for i in held)
        (2, [0, 1])
    """
    rng = np.random.default_rng(seed)
    if labels is None or len(labels) != n:
        groups = [np.arange(n)]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    held: list[int] = []
    for g in groups:
        g = rng.permutation(g)
        held += g[:int(round(len(g) * share))].tolist()
    if n == 1:
        return [0], [0]  # one example: it trains and measures
    if not held:  # tiny data: one example still measures the student
        held = [int(rng.integers(n))]
    held_set = set(held)
    train = [i for i in range(n) if i not in held_set]
    if not train:
        train = [held.pop()]
    return sorted(train), sorted(held)


@dataclass(frozen=True)
class Tolerance:
    """How far the student may end below its teacher: accuracy (or agreement) points, and the least cosine."""

    max_drop: float | None
    min_cosine: float | None


def _outputs(model: nn.Module, heldout, has_labels: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Student outputs, teacher outputs and labels on the held-out examples (on the CPU)."""
    loader = torch.utils.data.DataLoader(heldout, batch_size=128)
    device = next(model.parameters()).device
    outs, targets, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            batch = [t.to(device) for t in batch]
            inputs = batch[:-2] if has_labels else batch[:-1]
            out = model(*inputs)
            outs.append((out[0] if isinstance(out, (tuple, list)) else out).float().cpu())
            targets.append((batch[-2] if has_labels else batch[-1]).float().cpu())
            if has_labels:
                labels.append(batch[-1].cpu())
    return torch.cat(outs), torch.cat(targets), torch.cat(labels) if has_labels else None


def judge_student(model: nn.Module, heldout, *, has_labels: bool, embedding: bool, tol: Tolerance,
                  extra: dict[str, float]) -> Check:
    """The ``distill_heldout`` check: the student against its teacher on the held-out examples, with both numbers,
    failed when the student ends further below the teacher than ``tol`` allows (``None``: recorded, not judged)."""
    student, teacher, labels = _outputs(model, heldout, has_labels)
    cosine = float(nn.functional.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1).mean())
    metrics = {**extra, "cosine_to_teacher": cosine}
    classifier = not embedding and student.ndim == 2 and student.shape[-1] > 1
    if classifier:
        agreement = float((student.argmax(-1) == teacher.argmax(-1)).double().mean()) * 100.0
        metrics["agreement"] = agreement
        log_probs = torch.log_softmax(student, -1)
        if labels is not None:  # finer than accuracy, which often ties at 100% of a small held-out share
            if labels.ndim == 1 and len(labels) and 0 <= int(labels.min()) and int(labels.max()) < student.shape[-1]:
                metrics["log_loss"] = float(nn.functional.nll_loss(log_probs, labels.long()))
        else:
            metrics["kl_to_teacher"] = float(nn.functional.kl_div(log_probs, torch.log_softmax(teacher, -1),
                                                                  log_target=True, reduction="batchmean"))
        if labels is not None:
            s_acc = float((student.argmax(-1) == labels).double().mean()) * 100.0
            t_acc = float((teacher.argmax(-1) == labels).double().mean()) * 100.0
            metrics.update(student_accuracy=s_acc, teacher_accuracy=t_acc, accuracy_drop=t_acc - s_acc)
            drop, what = t_acc - s_acc, f"top-1 accuracy {s_acc:.2f}% vs the teacher's {t_acc:.2f}%"
        else:
            metrics["agreement_drop"] = 100.0 - agreement
            drop, what = 100.0 - agreement, f"top-1 agreement with the teacher {agreement:.2f}%"
        limit = tol.max_drop
        passed = limit is None or drop <= limit
        rule = "not judged (max_drop=None)" if limit is None else f"drop {drop:.2f} points, {limit:g} allowed"
        if limit is not None:
            metrics["max_drop"] = float(limit)
    else:
        limit = tol.min_cosine
        passed = limit is None or cosine >= limit
        what = f"cosine to the teacher {cosine:.4f}"
        rule = "not judged (min_cosine=None)" if limit is None else f"at least {limit:g} required"
        if limit is not None:
            metrics["min_cosine_required"] = float(limit)
    detail = f"on {len(student)} held-out examples: {what} ({rule})"
    return Check("distill_heldout", passed, metrics, detail)
