"""Detector outputs in one convention, whatever the model's own (end-to-end or raw per-anchor)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

# ONNX metadata keys written at export: the output convention and the class names (JSON).
OUTPUT_CONVENTION_KEY = "quantsweep_output"
CLASS_NAMES_KEY = "quantsweep_names"


class OutputConvention(enum.StrEnum):
    """What a detector's (exported) output tensor holds.

    ``raw``: ``[N, 4+nc, A]`` per-anchor xywh boxes in pixels and class scores (NMS needed);
    ``end2end``: ``[N, K, 6]`` x1, y1, x2, y2 in pixels, score, class (YOLOv10 one-to-one head);
    ``rtdetr``: ``[N, K, 6]`` cx, cy, w, h normalised to the input size, score, class (top-k over
    queries x classes; no NMS).
    """

    RAW = "raw"
    END2END = "end2end"
    RTDETR = "rtdetr"


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Centre-size boxes ``[..., 4]`` to corner boxes."""
    xy, half = boxes[..., :2], boxes[..., 2:4] / 2
    return torch.cat((xy - half, xy + half), dim=-1)


def rtdetr_detections(output: torch.Tensor, *, imgsz: int) -> torch.Tensor:
    """RT-DETR's ``[N, K, 6]`` (normalised cx, cy, w, h, score, class) as end-to-end detections in pixels."""
    return torch.cat((xywh_to_xyxy(output[..., :4] * imgsz), output[..., 4:6]), dim=-1)


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

    @classmethod
    def from_rtdetr(
        cls, boxes: torch.Tensor, scores: torch.Tensor, *, detections: torch.Tensor, imgsz: int
    ) -> HeadOutput:
        """RT-DETR's last decoder layer: per-query boxes ``[N, Q, 4]`` (normalised xywh) and
        probabilities ``[N, Q, nc]``, plus its top-k ``detections`` in the ``rtdetr`` convention.

        ``raw`` is ``[N, 4+nc, Q]`` with boxes in pixels, so the plain output error weighs boxes as
        it does for YOLO heads.
        """
        pixels = boxes * imgsz
        raw = torch.cat((pixels, scores), dim=-1).transpose(1, 2)
        return cls(
            raw=raw,
            boxes=xywh_to_xyxy(pixels),
            scores=scores,
            detections=rtdetr_detections(detections, imgsz=imgsz),
        )

    def float(self) -> HeadOutput:
        """The same output in float32 (a half-precision network's, for decoding and metrics)."""
        if self.raw.dtype == torch.float32:
            return self
        dets = None if self.detections is None else self.detections.float()
        return HeadOutput(
            raw=self.raw.float(), boxes=self.boxes.float(), scores=self.scores.float(), detections=dets
        )

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
