"""The same detections scored by pycocotools' COCOeval, to cross-check our mAP (optional dependency).

Targets and detections are handed over in our own form (letterboxed pixels, model class indices),
so both evaluators see identical inputs; only the conventions differ (see README, "COCO data").
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from quantsweep.core.errors import InputError
from quantsweep.metrics.map import MapResult


def _coco_api():
    try:
        from pycocotools.coco import COCO  # noqa: PLC0415 (optional, dev extra)
        from pycocotools.cocoeval import COCOeval  # noqa: PLC0415
    except ImportError:
        raise InputError("COCOeval figures need pycocotools (pip install -e '.[dev]')") from None
    return COCO, COCOeval


def _ground_truth(targets: list[np.ndarray]) -> dict:
    classes = sorted({int(c) for t in targets for c in t[:, 0]})
    annotations = []
    for image_id, target in enumerate(targets, start=1):
        for cls, x1, y1, x2, y2 in target.tolist():
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": i} for i in range(1, len(targets) + 1)],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in classes],
    }


def cocoeval_map(
    predictions: list[np.ndarray], targets: list[np.ndarray], *, max_det: int = 300
) -> MapResult:
    """COCOeval's AP@[.5:.95] and AP50 (area 'all', ``max_det`` detections per image) of per-image
    predictions ``[K, 6]`` against targets ``[M, 5]``, in the same pixel frame.
    """
    coco_cls, eval_cls = _coco_api()
    gt = coco_cls()
    gt.dataset = _ground_truth(targets)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt.createIndex()
        results = [
            {
                "image_id": image_id,
                "category_id": int(c),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": s,
            }
            for image_id, pred in enumerate(predictions, start=1)
            for x1, y1, x2, y2, s, c in pred.tolist()
        ]
        if not results:
            return MapResult(map50_95=0.0, map50=0.0)
        dt = gt.loadRes(results)
        evaluator = eval_cls(gt, dt, "bbox")
        evaluator.params.maxDets = [1, 10, max_det]
        evaluator.evaluate()
        evaluator.accumulate()
    # summarize() reads AP@[.5:.95] at maxDets=100 only; read the precision table at max_det instead
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class], area 'all'
    return MapResult(map50_95=_mean_valid(precision), map50=_mean_valid(precision[0]))


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]  # -1: a class without ground truth
    return float(valid.mean()) if valid.size else float("nan")
