"""COCO-style mAP50-95 and mAP50 (101-point interpolation, greedy matching by confidence)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantsweep.core.config import ApConvention

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_RECALL_POINTS = np.linspace(0, 1, 101)


@dataclass(frozen=True)
class MapResult:
    """mAP over the classes present in the targets."""

    map50_95: float
    map50: float


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between ``[N, 4]`` and ``[M, 4]`` xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def _overlapping_pairs(pred: np.ndarray, target: np.ndarray) -> dict[int, list[tuple[float, int]]]:
    """Per prediction, ``(-IoU, target)`` of the same-class targets it overlaps at IoU >= 0.5."""
    # Only those pairs can match, a few per prediction: IoU is computed one class at a time, and
    # the greedy matching walks short Python lists, which is several times faster than numpy
    # calls per prediction (this runs for every image of every scored model).
    candidates: dict[int, list[tuple[float, int]]] = {}
    for cls in np.intersect1d(target[:, 0], pred[:, 5]):
        ti, pj = np.flatnonzero(target[:, 0] == cls), np.flatnonzero(pred[:, 5] == cls)
        iou = box_iou(target[ti, 1:5], pred[pj, :4])
        rows, cols = np.nonzero(iou >= IOU_THRESHOLDS[0])
        for i, j, value in zip(ti[rows].tolist(), pj[cols].tolist(), iou[rows, cols].tolist(), strict=True):
            candidates.setdefault(j, []).append((-value, i))
    return candidates


def match(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``[K, 10]`` true-positive flags of predictions (best first) against targets, per IoU threshold.

    Greedy by confidence, per threshold: a prediction claims the unclaimed target of its class it
    overlaps most, if that overlap reaches the threshold (ties: the first target).
    """
    correct = np.zeros((len(pred), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(pred) or not len(target):
        return correct
    candidates = _overlapping_pairs(pred, target)
    thresholds = IOU_THRESHOLDS.tolist()
    claimed = [set() for _ in thresholds]
    order = np.argsort(-pred[:, 4], kind="stable").tolist()
    for j in (j for j in order if j in candidates):
        ranked = sorted(candidates[j])  # best overlap first, then the first target
        for t, (threshold, taken) in enumerate(zip(thresholds, claimed, strict=True)):
            for negative, i in ranked:
                if i in taken:
                    continue
                if -negative >= threshold:
                    correct[j, t] = True
                    taken.add(i)
                break
    return correct


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(np.trapezoid(np.interp(_RECALL_POINTS, mrec, mpre), _RECALL_POINTS))


def _average_precision_coco(recall: np.ndarray, precision: np.ndarray) -> float:
    # COCOeval: the precision envelope sampled (not interpolated) at 101 recall points, a point
    # beyond the highest recall reached counting 0; the mean, not a trapezoid.
    envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
    index = np.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = np.where(index < len(recall), envelope[np.minimum(index, len(recall) - 1)], 0.0)
    return float(sampled.mean())


def mean_average_precision(
    predictions: list[np.ndarray],
    targets: list[np.ndarray],
    *,
    convention: ApConvention = ApConvention.ULTRALYTICS,
) -> MapResult:
    """mAP of per-image predictions ``[K, 6]`` against targets ``[M, 5]`` (class, x1, y1, x2, y2).

    ``convention`` picks how precision is integrated over recall (README, "COCO data"): Ultralytics'
    trapezoid over the linearly interpolated envelope (default, as ``yolo val``) or COCOeval's mean
    of the envelope sampled at 101 recall points. Matching is the same for both.
    """
    integrate = _average_precision if convention is ApConvention.ULTRALYTICS else _average_precision_coco
    tp = [match(p, t) for p, t in zip(predictions, targets, strict=True)]
    tp_all = np.concatenate(tp) if tp else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    conf = np.concatenate([p[:, 4] for p in predictions]) if predictions else np.zeros(0)
    pred_cls = np.concatenate([p[:, 5] for p in predictions]) if predictions else np.zeros(0)
    target_cls = np.concatenate([t[:, 0] for t in targets]) if targets else np.zeros(0)
    classes = np.unique(target_cls)
    if not len(classes):
        return MapResult(map50_95=float("nan"), map50=float("nan"))
    order = np.argsort(-conf, kind="stable")
    tp_all, pred_cls = tp_all[order], pred_cls[order]
    ap = np.zeros((len(classes), len(IOU_THRESHOLDS)))
    for ci, cls in enumerate(classes):
        hits = tp_all[pred_cls == cls]
        n_targets = int((target_cls == cls).sum())
        if not len(hits):
            continue
        tpc = hits.cumsum(0)
        fpc = (1 - hits).cumsum(0)
        recall = tpc / (n_targets + 1e-16)
        precision = tpc / (tpc + fpc)
        for ti in range(len(IOU_THRESHOLDS)):
            ap[ci, ti] = integrate(recall[:, ti], precision[:, ti])
    return MapResult(map50_95=float(ap.mean()), map50=float(ap[:, 0].mean()))
