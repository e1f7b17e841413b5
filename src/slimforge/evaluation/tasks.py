"""Quality for the task, against the reference outputs on the same inputs: what a user of each kind of model
checks. Classifiers: top-1 agreement; detectors: boxes after NMS matched by IoU 0.5; segmentation and probability
maps: IoU of the thresholded maps; image-to-image: PSNR and SSIM; embedders: cosine and neighbour agreement;
sequence recognisers: per-step agreement and greedy-decoded strings; stateful models: decision agreement over the
stream. Each task has one *primary* metric in [0, 1] (1 = the reference's answers); goals such as
``max_accuracy_drop`` apply to it. Cosine stays as a secondary figure."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from slimforge.core.artifact import TASKS, IOSpec
from slimforge.evaluation.metrics import Metric, neighbour_agreement

PRIMARY = {"classification": "top1_agreement", "detection": "map50_vs_reference", "segmentation": "mask_iou",
           "image-to-image": "ssim", "embedding": "cosine", "sequence": "step_agreement",
           "stateful": "decision_agreement"}
# how far below the reference a candidate may go by default (the target's "1%" suits agreement of labels; boxes
# near the score threshold and mask borders flip under any rounding, so their agreement gets 5%)
__all__ = ["TASKS", "PRIMARY", "DEFAULT_DROP", "detect_task", "task_metrics"]
DEFAULT_DROP = {"detection": "5%", "segmentation": "5%", "sequence": "2%", "image-to-image": "2%"}


def detect_task(io: IOSpec, ref: Sequence[np.ndarray], meta: Mapping[str, Any] | None = None) -> str:
    """The task, from the declared one, the state inputs, then the outputs' shapes and values.

    Example:
        >>> from slimforge.core.artifact import TensorSpec
        >>> io = IOSpec((TensorSpec("x", ("b", 3, 8, 8), "float32"),), (TensorSpec("y", ("b", 5), "float32"),))
        >>> detect_task(io, [np.random.default_rng(0).random((4, 5))])
        'classification'
    """
    from slimforge.io.synth import state_pairs

    declared = str((meta or {}).get("task") or "generic")
    if declared != "generic":
        return declared
    if state_pairs(io):
        return "stateful"
    if not ref:
        return "generic"
    out = np.asarray(ref[0])
    image_in = next((t for t in io.inputs if len(t.shape) == 4), None)
    names = " ".join(t.name.lower() for t in io.outputs)
    if out.ndim == 2 and out.shape[1] >= 2:
        return "classification"
    if out.ndim == 3 and image_in is not None:
        if "box" in names or "det" in names or _box_layout(out) is not None:
            return "detection"
        return "sequence"
    if out.ndim == 4 and image_in is not None:  # a map per pixel: a mask or probabilities, or an image
        in_c = image_in.shape[1] if isinstance(image_in.shape[1], int) else 3
        if any(w in names for w in ("mask", "seg", "prob", "sigmoid", "score", "heatmap")):
            return "segmentation"
        image = out.shape[1] == 3 or (out.shape[1] == in_c == 1 and not _probability(out))
        return "image-to-image" if image else "segmentation"
    return "generic"


def task_metrics(task: str, ref: Sequence[np.ndarray], cand: Sequence[np.ndarray], io: IOSpec | None = None
                 ) -> dict[str, Metric]:
    """The task's metrics of ``cand`` against ``ref``; the primary one also as ``agreement`` (fraction)."""
    if not ref or not cand or np.asarray(ref[0]).shape != np.asarray(cand[0]).shape:
        return {}
    r, c = np.asarray(ref[0], np.float64), np.asarray(cand[0], np.float64)
    out: dict[str, Metric] = {}
    if task == "classification":
        out["top1_agreement"] = Metric(float(np.mean(r.reshape(len(r), -1).argmax(-1) == c.reshape(len(c), -1).argmax(-1))))
    elif task == "detection":
        agree, n_ref, n_cand = box_agreement(r, c)
        out["map50_vs_reference"] = Metric(map50(r, c))
        out["box_agreement"] = Metric(agree)
        out["boxes_reference"] = Metric(float(n_ref), "boxes")
        out["boxes_candidate"] = Metric(float(n_cand), "boxes")
    elif task == "segmentation":
        out["mask_iou"] = Metric(mask_iou(r, c))
    elif task == "image-to-image":
        psnr, ssim = image_quality(r, c)
        out["ssim"] = Metric(ssim)
        out["psnr_db"] = Metric(psnr, "dB")
    elif task == "embedding" and len(r) > 2:
        out["top10_agreement"] = Metric(neighbour_agreement(r, c, 10))
    elif task == "sequence":
        steps, strings = sequence_agreement(r, c)
        out["step_agreement"] = Metric(steps)
        out["string_agreement"] = Metric(strings)
    elif task == "stateful":
        out["decision_agreement"] = Metric(float(np.mean(_decisions(r) == _decisions(c))))
    primary = PRIMARY.get(task)
    if primary in out:
        out["agreement"] = Metric(out[primary].value)
    return out


# ---------------------------------------------------------------- classification, stateful


def _probability(x: np.ndarray) -> bool:
    return bool(x.size) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def _decisions(x: np.ndarray) -> np.ndarray:
    """Per example: the argmax over classes, or for one score, above 0.5 (a probability) or 0 (a logit)."""
    x = x.reshape(len(x), -1)
    if x.shape[1] > 1:
        return x.argmax(-1)
    return (x[:, 0] > (0.5 if _probability(x) else 0.0)).astype(np.int64)


# ---------------------------------------------------------------- detection


def _box_layout(out: np.ndarray) -> str | None:
    """``"bka"`` for ``[batch, 4 + classes, anchors]``, ``"bak"`` for ``[batch, anchors, 4 + classes]``, when the
    first four fields look like box coordinates (non-negative, beyond [0, 1]: pixels) and the rest like scores."""
    if out.ndim != 3 or min(out.shape[1:]) < 5:
        return None
    k_axis = 1 if out.shape[1] < out.shape[2] else 2
    fields = out if k_axis == 2 else out.transpose(0, 2, 1)
    boxes, scores = fields[..., :4], fields[..., 4:]
    if float(boxes.min()) < -1.0 or float(np.percentile(boxes, 90)) <= 1.5:
        return None
    if not _probability(scores) and float(np.abs(scores).max()) > 50:
        return None
    return "bak" if k_axis == 2 else "bka"


def detections(out: np.ndarray, *, conf: float = 0.25, iou: float = 0.45, max_det: int = 300) -> list[np.ndarray]:
    """Per image, ``[n, 6]`` rows of (x1, y1, x2, y2, score, class) after the score threshold and per-class NMS."""
    layout = _box_layout(out) or ("bka" if out.shape[1] < out.shape[2] else "bak")
    fields = out if layout == "bak" else out.transpose(0, 2, 1)
    scores_all = fields[..., 4:]
    if not _probability(scores_all):
        scores_all = 1.0 / (1.0 + np.exp(-scores_all))
    result = []
    for img, scores in zip(fields, scores_all):
        cls, score = scores.argmax(-1), scores.max(-1)
        keep = np.flatnonzero(score >= conf)
        keep = keep[np.argsort(-score[keep], kind="stable")][:4 * max_det]
        cx, cy, w, h = (img[keep, i] for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        chosen = _nms(boxes, score[keep], cls[keep], iou)[:max_det]
        result.append(np.concatenate([boxes[chosen], score[keep][chosen, None], cls[keep][chosen, None]], 1))
    return result


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``[n, 4]`` with every box in ``b`` ``[m, 4]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    same = np.all(a[:, None, :4] == b[None, :, :4], -1)  # equal degenerate (zero-area) boxes are the same box
    return np.where(union > 1e-12, inter / np.maximum(union, 1e-12), same.astype(np.float64))


def _nms(boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, iou: float) -> np.ndarray:
    order, keep = np.argsort(-scores, kind="stable"), []
    suppressed = np.zeros(len(boxes), bool)
    overlaps = _iou(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (overlaps[i] > iou) & (cls == cls[i])
    return np.asarray(keep, dtype=np.int64)


def box_agreement(ref: np.ndarray, cand: np.ndarray, *, iou: float = 0.5) -> tuple[float, int, int]:
    """F1 of the candidate's boxes against the reference's (same class, IoU >= ``iou``, greedy by score), over
    every image: 1.0 when both find the same boxes (or none). Returns (agreement, reference boxes, candidate boxes)."""
    matched = n_ref = n_cand = 0
    for a, b in zip(detections(ref), detections(cand)):
        n_ref, n_cand = n_ref + len(a), n_cand + len(b)
        if not len(a) or not len(b):
            continue
        ious = _iou(a[:, :4], b[:, :4]) * (a[:, None, 5] == b[None, :, 5])
        used = np.zeros(len(b), bool)
        for i in range(len(a)):
            j = int(np.argmax(np.where(used, -1.0, ious[i])))
            if not used[j] and ious[i, j] >= iou:
                used[j] = True
                matched += 1
    total = n_ref + n_cand
    return (1.0 if total == 0 else 2.0 * matched / total), n_ref, n_cand


def map50(ref: np.ndarray, cand: np.ndarray, *, iou: float = 0.5) -> float:
    """mAP@0.5 of the candidate's detections (scores down to 0.001, ranked) with the reference's detections (score
    >= 0.25, after NMS) as the ground truth: 1.0 when it finds every box the reference finds, ranked above its
    own extra ones. A box near the score threshold that a rounding moves across it costs little, as in a real
    evaluation; a lost or displaced box costs its share."""
    gts, dets = detections(ref), detections(cand, conf=0.001)
    classes = sorted({int(k) for g in gts for k in g[:, 5]})
    if not classes:
        return 1.0
    aps = []
    for k in classes:
        n_gt = sum(int(np.sum(g[:, 5] == k)) for g in gts)
        scored = []  # (score, true positive)
        for g, d in zip(gts, dets):
            g, d = g[g[:, 5] == k], d[d[:, 5] == k]
            d = d[np.argsort(-d[:, 4], kind="stable")]
            used = np.zeros(len(g), bool)
            ious = _iou(d[:, :4], g[:, :4]) if len(g) and len(d) else np.zeros((len(d), len(g)))
            for i in range(len(d)):
                j = int(np.argmax(np.where(used, -1.0, ious[i]))) if len(g) else -1
                hit = j >= 0 and not used[j] and ious[i, j] >= iou
                if hit:
                    used[j] = True
                scored.append((float(d[i, 4]), hit))
        scored.sort(key=lambda t: -t[0])
        tp = np.cumsum([h for _, h in scored]) if scored else np.zeros(0)
        recall = np.concatenate([[0.0], tp / n_gt, [1.0]])
        precision = np.concatenate([[1.0], tp / np.arange(1, len(tp) + 1), [0.0]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
        aps.append(float(np.sum(np.diff(recall) * precision[1:])))
    return float(np.mean(aps))


# ---------------------------------------------------------------- maps and images


def mask_iou(ref: np.ndarray, cand: np.ndarray) -> float:
    """IoU of the thresholded maps (one channel: > 0.5 for probabilities, > 0 for logits; several: the argmax
    class, mean IoU over the classes present)."""
    if ref.ndim == 4 and ref.shape[1] > 1:
        a, b = ref.argmax(1), cand.argmax(1)
        ious = []
        for k in np.union1d(np.unique(a), np.unique(b)):
            inter, union = np.sum((a == k) & (b == k)), np.sum((a == k) | (b == k))
            ious.append(inter / union if union else 1.0)
        return float(np.mean(ious)) if ious else 1.0
    t = 0.5 if _probability(ref) else 0.0
    a, b = ref > t, cand > t
    union = np.sum(a | b)
    return float(np.sum(a & b) / union) if union else 1.0


def image_quality(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, mean SSIM) of candidate images ``[N, C, H, W]`` against the reference (scikit-image's SSIM;
    the data range: 1 for images in [0, 1], else the reference's range)."""
    from skimage.metrics import structural_similarity

    hi, lo = float(ref.max()), float(ref.min())
    rng = 1.0 if lo >= -0.01 and hi <= 1.01 else max(hi - lo, 1e-12)
    mse = float(np.mean((ref - cand) ** 2))
    psnr = float("inf") if mse == 0 else float(10 * np.log10(rng ** 2 / mse))
    win = max(3, min(7, *(s - (1 - s % 2) for s in ref.shape[2:])))
    ssim = [structural_similarity(r, c, data_range=rng, channel_axis=0, win_size=win if win % 2 else win - 1)
            for r, c in zip(ref, cand)]
    return min(psnr, 200.0), float(np.mean(ssim))


def sequence_agreement(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """(per-step argmax agreement, share of greedily CTC-decoded strings that are equal) of ``[N, T, C]``."""
    a, b = ref.argmax(-1), cand.argmax(-1)

    def decode(row: np.ndarray) -> tuple[int, ...]:
        return tuple(int(x) for i, x in enumerate(row) if x != 0 and (i == 0 or x != row[i - 1]))

    strings = np.mean([decode(x) == decode(y) for x, y in zip(a, b)])
    return float(np.mean(a == b)), float(strings)
