"""Detector outputs in one convention, whatever the model's own (end-to-end or raw per-anchor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadOutput:
    """Per-anchor predictions of a detection head, in letterboxed input pixels.

    ``raw`` is the head's decoded tensor ``[N, 4+nc, A]`` as the model returns it (used for the
    plain output MSE); ``boxes`` is ``[N, A, 4]`` xyxy and ``scores`` ``[N, A, nc]`` probabilities.
    ``detections`` is ``[N, K, 6]`` (x1, y1, x2, y2, score, class) when the model is end-to-end
    (NMS-free); otherwise None and detections come from NMS over the anchors.
    """

    raw: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    detections: torch.Tensor | None = None

    @classmethod
    def from_raw(
        cls, raw: torch.Tensor, *, boxes_are_xywh: bool, detections: torch.Tensor | None = None
    ) -> HeadOutput:
        """Split a ``[N, 4+nc, A]`` tensor into boxes (converted to xyxy) and scores."""
        boxes = raw[:, :4].transpose(1, 2)
        if boxes_are_xywh:
            xy, wh = boxes[..., :2], boxes[..., 2:] / 2
            boxes = torch.cat((xy - wh, xy + wh), dim=-1)
        return cls(raw=raw, boxes=boxes, scores=raw[:, 4:].transpose(1, 2), detections=detections)

    @staticmethod
    def concat(parts: list[HeadOutput]) -> HeadOutput:
        """Join batches along the image axis."""
        dets = None if parts[0].detections is None else torch.cat([p.detections for p in parts])
        return HeadOutput(
            raw=torch.cat([p.raw for p in parts]),
            boxes=torch.cat([p.boxes for p in parts]),
            scores=torch.cat([p.scores for p in parts]),
            detections=dets,
        )
