"""Score a detector loaded in any target runtime: decode its outputs, mAP against labels and FP32.

Both YOLO output conventions are decoded: raw ``[N, 4+nc, A]`` (xywh boxes, class scores; NMS
applied here) and end-to-end ``[N, K, 6]`` (x1, y1, x2, y2, score, class); RT-DETR's ``[N, K, 6]``
(normalised cx, cy, w, h, score, class) is recognised by the convention recorded in the model's
metadata at export. Every model is decoded with the same confidence, IoU and max-detection
settings, whatever runtime produced its outputs.
"""

from __future__ import annotations

import ast
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from quantsweep.core.config import DetectConfig
from quantsweep.core.errors import InputError
from quantsweep.data.coco import is_coco_json
from quantsweep.data.images import Batch
from quantsweep.metrics.coco_eval import cocoeval_map
from quantsweep.metrics.detections import decode
from quantsweep.metrics.map import MapResult, mean_average_precision
from quantsweep.models.outputs import (
    CLASS_NAMES_KEY,
    OUTPUT_CONVENTION_KEY,
    HeadOutput,
    OutputConvention,
    rtdetr_detections,
)
from quantsweep.targets import Backend, Runner
from quantsweep.targets.base import onnx_source


def model_metadata(path: Path) -> dict[str, str]:
    """The metadata properties (output convention, class names) of the ONNX the model was made from."""
    source = onnx_source(path)
    if not source.is_file():  # a third-party IR (Ultralytics' OpenVINO export): decoded by shape
        return {}
    return {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}


def output_convention(path: Path) -> OutputConvention | None:
    """The convention recorded in the model's metadata at export (None for older exports)."""
    value = model_metadata(path).get(OUTPUT_CONVENTION_KEY)
    return OutputConvention(value) if value in set(OutputConvention) else None


def class_names(path: Path) -> dict[int, str] | None:
    """The model's class names recorded at export (ours, or Ultralytics' own ``names``), or None."""
    meta = model_metadata(path)
    if CLASS_NAMES_KEY in meta:
        return {int(k): v for k, v in json.loads(meta[CLASS_NAMES_KEY]).items()}
    if "names" in meta:  # an Ultralytics export: a Python dict literal
        with contextlib.suppress(ValueError, SyntaxError):
            names = ast.literal_eval(meta["names"])
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
    return None


def coco_class_names(data: str | Path, model_path: Path) -> dict[int, str] | None:
    """The class names to map a COCO json's categories by (None when ``data`` is not a json)."""
    if not is_coco_json(Path(data)):
        return None
    names = class_names(model_path)
    if names is None:
        raise InputError(
            f"{model_path.name} records no class names, so the categories of {data} cannot be "
            "mapped to its classes; re-export it with this version (quantsweep schemes)"
        )
    return names


def load_checked(backend: Backend, path: Path, *, imgsz: int, scoring: bool = False) -> Runner:
    """``path`` loaded in ``backend``'s runtime, refusing a model made for another input size;
    ``scoring``: loaded to score many images (Backend.load_for_scoring), never to time."""
    if not Path(path).is_file():
        raise InputError(f"candidate model not found: {path}")
    runner = backend.load_for_scoring(Path(path)) if scoring else backend.load(Path(path))
    size = runner.input_size()
    if size is not None and tuple(size) != (imgsz, imgsz):
        raise InputError(
            f"{Path(path).name} takes {size[0]}x{size[1]} inputs, but the data is prepared at {imgsz}x{imgsz}"
        )
    return runner


def head_output(
    runner: Runner, images: torch.Tensor, *, convention: OutputConvention | None = None
) -> HeadOutput:
    """Outputs of all images (batch 1 each) as a HeadOutput, in the model's convention."""
    raw = np.concatenate(runner.run_all([image[None].numpy() for image in images]))
    tensor = torch.from_numpy(raw)
    if convention is OutputConvention.RTDETR:  # [N, K, 6], normalised xywh
        empty = torch.zeros(0)
        dets = rtdetr_detections(tensor, imgsz=images.shape[-1])
        return HeadOutput(raw=tensor, boxes=empty, scores=empty, detections=dets)
    if tensor.shape[-1] == 6 and tensor.shape[1] != 6:  # [N, K, 6] end-to-end
        empty = torch.zeros(0)
        return HeadOutput(raw=tensor, boxes=empty, scores=empty, detections=tensor)
    return HeadOutput.from_raw(tensor, boxes_are_xywh=True)


@dataclass(frozen=True)
class Accuracy:
    """mAP against labels (when given) and against the FP32 model's own detections."""

    map50_95_gt: float | None
    map50_gt: float | None
    map50_95_vs_fp32: float
    map50_vs_fp32: float
    # pycocotools' COCOeval on the same detections and labels (None without labels or pycocotools)
    cocoeval_map50_95_gt: float | None = None

    def value(self, metric: str) -> float:
        """The figure named ``metric`` (``map50_95_gt`` or ``map50_95_vs_fp32``)."""
        return getattr(self, metric)

    def judging_metric(self) -> str:
        """The metric targets are judged by when this is the FP32 reference: mAP50-95 against labels,
        unless there are none or the reference itself detects nothing real (then agreement with FP32)."""
        return "map50_95_gt" if self.map50_95_gt else "map50_95_vs_fp32"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def detections_of(
    runner: Runner, batch: Batch, detect: DetectConfig, *, convention: OutputConvention | None = None
) -> list[np.ndarray]:
    """Decoded detections for every image of ``batch``."""
    return decode(head_output(runner, batch.images, convention=convention), detect)


def accuracy(detections: list[np.ndarray], *, batch: Batch, pseudo: list[np.ndarray]) -> Accuracy:
    """Score detections against labels and against the FP32 pseudo-labels."""
    gt = mean_average_precision(detections, batch.labels) if batch.labels is not None else None
    vs_fp32: MapResult = mean_average_precision(detections, pseudo)
    return Accuracy(
        map50_95_gt=None if gt is None else gt.map50_95,
        map50_gt=None if gt is None else gt.map50,
        map50_95_vs_fp32=vs_fp32.map50_95,
        map50_vs_fp32=vs_fp32.map50,
        cocoeval_map50_95_gt=_cocoeval(detections, batch.labels),
    )


def _cocoeval(detections: list[np.ndarray], labels: list[np.ndarray] | None) -> float | None:
    """COCOeval's mAP50-95 of the same detections, stated next to ours; None where it cannot run."""
    if labels is None or not any(len(t) for t in labels):
        return None
    try:
        return cocoeval_map(detections, labels).map50_95
    except InputError:  # pycocotools is optional (dev extra)
        return None
