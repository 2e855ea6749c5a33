from __future__ import annotations

import numpy as np
import pytest
import torch

from quantsweep.core.config import DetectConfig
from quantsweep.metrics.detections import decode
from quantsweep.metrics.map import IOU_THRESHOLDS, box_iou, match, mean_average_precision
from quantsweep.metrics.output_errors import output_error
from quantsweep.models.outputs import HeadOutput

# Ultralytics' 101-point trapezoid AP gives a perfect detector 0.995 (COCO's mean gives 1.0); the
# tool keeps Ultralytics' convention so its figures compare with `yolo val`.
PERFECT = 0.995
TARGETS = [
    np.array([[0, 10, 10, 50, 50], [1, 60, 60, 90, 80]], np.float32),
    np.array([[0, 5, 5, 25, 45]], np.float32),
]


def _as_predictions(targets, shift: float = 0.0):
    return [np.concatenate((t[:, 1:5] + shift, np.full((len(t), 1), 0.9), t[:, :1]), axis=1) for t in targets]


def test_perfect_predictions_score_one() -> None:
    result = mean_average_precision(_as_predictions(TARGETS), TARGETS)
    assert result.map50_95 == pytest.approx(PERFECT, abs=1e-6)
    assert result.map50 == pytest.approx(PERFECT, abs=1e-6)


def test_shifted_boxes_lose_strict_thresholds_only() -> None:
    result = mean_average_precision(_as_predictions(TARGETS, shift=3.0), TARGETS)
    assert result.map50 == pytest.approx(PERFECT, abs=1e-6)
    assert 0.2 < result.map50_95 < 0.9


def test_wrong_class_and_missing_predictions() -> None:
    wrong = _as_predictions(TARGETS)
    for p in wrong:
        p[:, 5] = 7
    assert mean_average_precision(wrong, TARGETS).map50_95 == 0.0
    empty = [np.zeros((0, 6), np.float32) for _ in TARGETS]
    assert mean_average_precision(empty, TARGETS).map50_95 == 0.0


def test_duplicate_detection_is_a_false_positive() -> None:
    preds = _as_predictions(TARGETS)
    dup = preds[0][:1].copy()
    dup[0, 4] = 0.95  # a more confident duplicate claims the target; the original becomes a FP
    with_dup = [np.concatenate((dup, preds[0])), preds[1]]
    assert mean_average_precision(with_dup, TARGETS).map50_95 < PERFECT - 0.05
    dup[0, 4] = 0.5  # a less confident duplicate ranks after every TP and costs nothing
    late_dup = [np.concatenate((preds[0], dup)), preds[1]]
    assert mean_average_precision(late_dup, TARGETS).map50_95 == pytest.approx(PERFECT, abs=1e-6)


def _greedy_match(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """COCO's greedy matching written plainly (the tool's ``match`` walks only overlapping pairs)."""
    correct = np.zeros((len(pred), len(IOU_THRESHOLDS)), dtype=bool)
    iou = box_iou(target[:, 1:5], pred[:, :4]) * (target[:, :1] == pred[None, :, 5])
    for t, threshold in enumerate(IOU_THRESHOLDS):
        claimed = np.zeros(len(target), dtype=bool)
        for j in np.argsort(-pred[:, 4], kind="stable"):
            available = np.where(claimed, 0.0, iou[:, j])
            best = int(available.argmax()) if len(target) else 0
            if len(target) and available[best] >= threshold:
                correct[j, t], claimed[best] = True, True
    return correct


def test_matching_is_greedy_by_confidence_with_ties_to_the_first_target() -> None:
    # the first box overlaps both targets equally and claims the first; the second box, the first
    # target exactly, is left the second at IoU 1/3: a false positive
    target = np.array([[0, 0, 0, 10, 10], [0, 5, 0, 15, 10]], np.float32)
    pred = np.array([[2.5, 0, 12.5, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]], np.float32)
    assert match(pred, target)[:, 0].tolist() == [True, False]
    # crowded images (as a random-init detector's 300 boxes against its own pseudo-labels): many
    # overlapping boxes, repeated confidences and boxes (ties), three classes, float32 as decoded
    rng = np.random.default_rng(0)
    for _ in range(60):
        n_pred, n_target = rng.integers(0, 120), rng.integers(0, 25)
        corner = rng.uniform(0, 60, (n_target, 2))
        target = np.concatenate(
            (rng.integers(0, 3, (n_target, 1)), corner, corner + rng.uniform(4, 30, (n_target, 2))), axis=1
        ).astype(np.float32)
        target = np.concatenate((target, target[: rng.integers(0, 3)]))  # the same box labelled twice
        if len(target):
            picked = target[rng.integers(0, len(target), n_pred)]
            boxes = np.round(picked[:, 1:5] + rng.normal(0, rng.choice([0.5, 3.0]), (n_pred, 4)))
            classes = np.where(rng.random(n_pred) < 0.8, picked[:, 0], rng.integers(0, 3, n_pred))
        else:
            boxes, classes = rng.uniform(0, 60, (n_pred, 4)), np.zeros(n_pred)
        conf = np.round(rng.random(n_pred), 1)
        pred = np.concatenate((boxes, conf[:, None], classes[:, None]), axis=1).astype(np.float32)
        np.testing.assert_array_equal(match(pred, target), _greedy_match(pred, target))


def _head(boxes: torch.Tensor, scores: torch.Tensor) -> HeadOutput:
    xywh = torch.cat(((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), dim=-1)
    return HeadOutput.from_raw(torch.cat((xywh, scores), dim=-1).transpose(1, 2), boxes_are_xywh=True)


def test_nms_decoding_merges_overlaps_and_keeps_classes_apart() -> None:
    boxes = torch.tensor([[[10.0, 10, 50, 50], [11, 11, 51, 51], [10, 10, 50, 50], [100, 100, 120, 130]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.0005, 0.0]]])
    (det,) = decode(_head(boxes, scores), DetectConfig())
    assert det.shape == (2, 6)
    assert sorted(det[:, 5].tolist()) == [0.0, 1.0]
    assert det[0, 4] == pytest.approx(0.9)


def test_box_error_is_confidence_weighted_and_in_pixels() -> None:
    boxes = torch.tensor([[[10.0, 10, 50, 50], [60, 60, 90, 90]]])
    scores = torch.tensor([[[0.9], [0.01]]])
    ref = _head(boxes, scores)
    moved_confident = _head(boxes + torch.tensor([[[2.0] * 4, [0.0] * 4]]), scores)
    moved_background = _head(boxes + torch.tensor([[[0.0] * 4, [2.0] * 4]]), scores)
    e1, e2 = output_error(moved_confident, ref), output_error(moved_background, ref)
    assert e1.box_error == pytest.approx(2.0 * (0.9 / 0.91) ** 0.5, rel=1e-4)
    assert e2.box_error < e1.box_error / 5
    assert output_error(ref, ref).box_error == 0.0 and output_error(ref, ref).sqnr_db == float("inf")
