"""Turn per-anchor head outputs into detections with the same settings for every model compared."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import batched_nms

from quantsweep.core.config import DetectConfig
from quantsweep.models.outputs import HeadOutput

_MAX_CANDIDATES = 30000


def decode(output: HeadOutput, settings: DetectConfig) -> list[np.ndarray]:
    """Detections per image as ``[K, 6]`` arrays (x1, y1, x2, y2, score, class), best first.

    End-to-end heads already give top-k detections (thresholded here); raw heads go through
    multi-label, class-aware NMS as Ultralytics' validator does.
    """
    if output.detections is not None:
        return [_threshold(det, settings) for det in output.detections]
    return [_nms_one(b, s, settings) for b, s in zip(output.boxes, output.scores, strict=True)]


def _threshold(det: torch.Tensor, settings: DetectConfig) -> np.ndarray:
    det = det[det[:, 4] > settings.conf_threshold][: settings.max_det]
    return det.detach().cpu().numpy().astype(np.float32)


def _nms_one(boxes: torch.Tensor, scores: torch.Tensor, settings: DetectConfig) -> np.ndarray:
    anchor, cls = torch.nonzero(scores > settings.conf_threshold, as_tuple=True)
    conf = scores[anchor, cls]
    if conf.numel() > _MAX_CANDIDATES:
        top = conf.topk(_MAX_CANDIDATES).indices
        anchor, cls, conf = anchor[top], cls[top], conf[top]
    picked = boxes[anchor]
    keep = batched_nms(picked, conf, cls, settings.iou_threshold)[: settings.max_det]
    out = torch.cat((picked[keep], conf[keep, None], cls[keep, None].float()), dim=1)
    return out.detach().cpu().numpy().astype(np.float32)


def pseudo_labels(detections: list[np.ndarray], settings: DetectConfig) -> list[np.ndarray]:
    """Reference detections above the pseudo-label confidence, as ``[M, 5]`` (class, x1, y1, x2, y2)."""
    labels = []
    for det in detections:
        kept = det[det[:, 4] >= settings.pseudo_label_conf]
        labels.append(np.concatenate((kept[:, 5:6], kept[:, :4]), axis=1))
    return labels
