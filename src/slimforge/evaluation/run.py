"""Evaluating a candidate against a reference on data: accuracy, fidelity, embedding neighbour agreement."""

from __future__ import annotations


import numpy as np

from slimforge.core.artifact import Artifact
from slimforge.evaluation.metrics import Metric, accuracy, cosine_similarity, fidelity_metrics, neighbour_agreement
from slimforge.io.data import Dataset


def collect_outputs(art: Artifact, data: Dataset, *, runtime: str | None = None, batch_size: int = 32,
                    limit: int | None = None, device: str = "cpu") -> tuple[list[np.ndarray], np.ndarray | None]:
    """Run ``art`` over the data; returns the concatenated outputs and labels (if the data has them)."""
    from slimforge.runtimes import open_session

    sess = open_session(art, runtime, device=device)
    outs: list[list[np.ndarray]] = []
    labels: list[np.ndarray] = []
    try:
        for batch in data.batches(batch_size, limit=limit):
            outs.append(sess.run(batch.feeds))
            if batch.labels is not None:
                labels.append(batch.labels)
    finally:
        sess.close()
    merged = [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]
    return merged, (np.concatenate(labels) if labels else None)


def quality_metrics(task: str, cand: list[np.ndarray], ref: list[np.ndarray] | None,
                    labels: np.ndarray | None, *, k: int = 10) -> dict[str, Metric]:
    """The metrics that fit the task: accuracy/top-5 with labels, cosine/neighbours for embeddings, fidelity."""
    out: dict[str, Metric] = {}
    if labels is not None and cand[0].ndim == 2:
        out["accuracy"] = Metric(accuracy(cand[0], labels, 1) * 100, "%")
        if cand[0].shape[1] > 5:
            out["top5_accuracy"] = Metric(accuracy(cand[0], labels, 5) * 100, "%")
    if ref is not None:
        fid = fidelity_metrics(ref, cand)
        out["cosine"] = Metric(fid["cosine"], "")
        out["min_cosine"] = Metric(fid["min_cosine"], "")
        out["sqnr_db"] = Metric(fid["sqnr_db"], "dB")
        out["max_abs_error"] = Metric(fid["max_abs"], "", higher_is_better=False)
        if task == "embedding":
            out[f"top{k}_agreement"] = Metric(neighbour_agreement(ref[0], cand[0], k), "")
        if task == "classification" or (labels is not None and cand[0].ndim == 2):
            out["label_agreement"] = Metric(float(np.mean(ref[0].argmax(-1) == cand[0].argmax(-1))) * 100, "%")
        from slimforge.evaluation.tasks import task_metrics

        out.update(task_metrics(task, ref, cand))
    return out


def evaluate(candidate: Artifact, data: Dataset, *, reference: Artifact | None = None, runtime: str | None = None,
             reference_runtime: str | None = None, limit: int | None = None, k: int = 10) -> dict[str, Metric]:
    """Evaluate ``candidate`` on ``data`` (and against ``reference`` when given).

    Example:
        >>> # metrics = evaluate(int8_art, load_data("sentences.txt", int8_art), reference=fp32_art)
    """
    cand, labels = collect_outputs(candidate, data, runtime=runtime, limit=limit)
    ref = collect_outputs(reference, data, runtime=reference_runtime, limit=limit)[0] if reference else None
    task = str(candidate.meta.get("task") or "generic")
    return quality_metrics(task, cand, ref, labels, k=k)


__all__ = ["collect_outputs", "cosine_similarity", "evaluate", "quality_metrics"]
