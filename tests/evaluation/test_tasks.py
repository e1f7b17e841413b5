"""Task metrics against the reference on the same inputs: each one must move when the answers change, and say 1.0
only when they do not."""

import numpy as np
import pytest

from slimforge.core.artifact import IOSpec, TensorSpec
from slimforge.evaluation.tasks import (box_agreement, detect_task, detections, image_quality, map50, mask_iou,
                                        task_metrics)


def _io(inputs: dict[str, tuple], outputs: dict[str, tuple]) -> IOSpec:
    return IOSpec(tuple(TensorSpec(n, s, "float32") for n, s in inputs.items()),
                  tuple(TensorSpec(n, s, "float32") for n, s in outputs.items()))


def _detector_output(boxes: list[tuple[float, float, float, float, int, float]], classes: int = 3,
                     anchors: int = 50) -> np.ndarray:
    """``[1, 4 + classes, anchors]`` (YOLO layout): the given boxes (cx, cy, w, h, class, score), the other
    anchors low-scored boxes."""
    rng = np.random.default_rng(0)
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    out[0, :4] = rng.uniform(20, 300, (4, anchors))
    out[0, 4:] = rng.uniform(0.0, 0.05, (classes, anchors))
    for i, (cx, cy, w, h, k, s) in enumerate(boxes):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + k, i] = s
    return out


BOXES = [(50, 50, 40, 40, 0, 0.9), (200, 120, 60, 30, 1, 0.8), (150, 250, 30, 80, 2, 0.7)]


def test_detection_metrics_are_one_for_the_same_boxes_and_drop_for_a_lost_or_moved_box():
    ref = _detector_output(BOXES)
    assert len(detections(ref)[0]) == 3
    same = task_metrics("detection", [ref], [ref.copy()])
    assert same["map50_vs_reference"].value == 1.0 and same["box_agreement"].value == 1.0
    assert same["agreement"].value == 1.0

    lost = _detector_output(BOXES[:2] + [(150, 250, 30, 80, 2, 0.1)])  # below the 0.25 score threshold
    assert box_agreement(ref, lost)[0] == pytest.approx(2 * 2 / 5)
    assert map50(ref, lost) == 1.0  # mAP ranks it, found at score 0.1 as in a real evaluation; F1 does not
    moved = _detector_output(BOXES[:2] + [(190, 250, 30, 80, 2, 0.7)])  # moved by its width: IoU 0
    assert map50(ref, moved) == pytest.approx(2 / 3)
    assert box_agreement(ref, moved)[0] == pytest.approx(2 * 2 / 6)
    relabelled = _detector_output(BOXES[:2] + [(150, 250, 30, 80, 1, 0.7)])  # the right box, the wrong class
    assert map50(ref, relabelled) < 0.9
    slightly = _detector_output([(52, 51, 40, 40, 0, 0.88)] + BOXES[1:])  # a rounding: IoU 0.9, still the box
    assert map50(ref, slightly) == 1.0 and box_agreement(ref, slightly)[0] == 1.0


def test_detection_reads_anchors_last_and_anchors_first_layouts():
    ref = _detector_output(BOXES)
    assert len(detections(ref.transpose(0, 2, 1))[0]) == 3
    io = _io({"images": ("batch", 3, "height", "width")}, {"output0": ("batch", 7, "anchors")})
    assert detect_task(io, [ref]) == "detection"


def test_top1_agreement_counts_changed_answers():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((8, 10)).astype(np.float32)
    cand = ref.copy()
    cand[[1, 5]] = cand[[1, 5]][:, ::-1]  # two rows now pick another class
    changed = int(np.sum(ref.argmax(1) != cand.argmax(1)))
    assert changed >= 1
    m = task_metrics("classification", [ref], [cand])
    assert m["top1_agreement"].value == pytest.approx(1 - changed / 8)
    assert m["agreement"].value == m["top1_agreement"].value


def test_mask_iou_of_thresholded_maps():
    ref = np.zeros((1, 1, 32, 32), np.float32)
    ref[..., 8:24, 8:24] = 0.9  # 256 pixels
    cand = ref.copy()
    assert mask_iou(ref, cand) == 1.0
    cand[..., 8:16, 8:24] = 0.4  # half the mask falls under 0.5
    assert mask_iou(ref, cand) == pytest.approx(0.5)
    probs = np.full((1, 1, 32, 32), 0.6, np.float32)  # cosine would call this close to ref; IoU does not
    assert mask_iou(ref, probs) == pytest.approx(256 / 1024)


def test_image_quality_psnr_and_ssim():
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:48, 0:48] / 48.0
    ref = np.stack([np.sin(6 * x) * 0.4 + 0.5, y, x * y])[None].astype(np.float32)
    psnr, ssim = image_quality(ref, ref.copy())
    assert psnr == 200.0 and ssim == pytest.approx(1.0)
    noisy = np.clip(ref + rng.normal(0, 0.1, ref.shape), 0, 1).astype(np.float32)
    psnr, ssim = image_quality(ref, noisy)
    assert 15 < psnr < 25 and ssim < 0.8
    m = task_metrics("image-to-image", [ref], [noisy])
    assert m["agreement"].value == pytest.approx(ssim) and m["psnr_db"].unit == "dB"


def test_sequence_and_stateful_agreement():
    ref = np.zeros((2, 6, 4), np.float32)
    ref[0, :, :] = np.eye(4)[[1, 1, 0, 2, 0, 3]]
    ref[1, :, :] = np.eye(4)[[0, 2, 2, 0, 0, 1]]
    cand = ref.copy()
    cand[1, 5] = np.eye(4)[3]  # one step of six in the second line: its string changes
    m = task_metrics("sequence", [ref], [cand])
    assert m["step_agreement"].value == pytest.approx(11 / 12)
    assert m["string_agreement"].value == 0.5
    speech = np.array([[0.9], [0.2], [0.7], [0.4]], np.float32)
    flipped = np.array([[0.9], [0.6], [0.7], [0.4]], np.float32)
    assert task_metrics("stateful", [speech], [flipped])["decision_agreement"].value == 0.75


@pytest.mark.parametrize("inputs,outputs,value,task", [
    ({"x": ("n", 3, "h", "w")}, {"probs": ("n", 10)}, np.full((2, 10), 0.1), "classification"),
    ({"x": (-1, 3, "?", "?")}, {"map": (-1, 1, "?", "?")}, np.full((1, 1, 8, 8), 0.3), "segmentation"),
    ({"input": ("b", 3, "h", "w")}, {"output": ("b", 3, "2h", "2w")}, np.full((1, 3, 8, 8), 1.7),
     "image-to-image"),
    ({"x": ("n", 3, 32, "w")}, {"y": ("n", "t", 37)}, np.full((1, 8, 37), 0.02), "sequence"),
    ({"audio": ("b", "s"), "state": (2, "b", 64)}, {"p": ("b", 1), "stateN": (2, "b", 64)}, np.zeros((1, 1)),
     "stateful"),
])
def test_task_detected_from_outputs_and_names(inputs, outputs, value, task):
    assert detect_task(_io(inputs, outputs), [np.asarray(value, np.float32)]) == task


def test_declared_task_wins():
    io = _io({"x": ("n", 3, "h", "w")}, {"probs": ("n", 10)})
    assert detect_task(io, [np.zeros((1, 10))], {"task": "embedding"}) == "embedding"
