"""Run an ONNX detector in ONNX Runtime and score it like a detector: mAP, latency, size.

Both YOLO output conventions are decoded: raw ``[N, 4+nc, A]`` (xywh boxes, class scores; NMS
applied here) and end-to-end ``[N, K, 6]`` (x1, y1, x2, y2, score, class); RT-DETR's ``[N, K, 6]``
(normalised cx, cy, w, h, score, class) is recognised by the convention recorded in the model's
metadata at export. Every model is decoded
with the same confidence, IoU and max-detection settings.
"""

from __future__ import annotations

import ast
import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from quantsweep.config import DetectConfig
from quantsweep.data.coco import is_coco_json
from quantsweep.data.images import Batch
from quantsweep.errors import InputError
from quantsweep.export.ort_session import open_session
from quantsweep.metrics.detections import decode
from quantsweep.metrics.map import MapResult, mean_average_precision
from quantsweep.models.outputs import (
    CLASS_NAMES_KEY,
    OUTPUT_CONVENTION_KEY,
    HeadOutput,
    OutputConvention,
    rtdetr_detections,
)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Latency:
    """Per-image latency (batch 1) on one execution provider."""

    provider: str
    median_ms: float
    p90_ms: float
    throughput_ips: float
    runs: int


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers, best first (CPU always)."""
    offered = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in offered]


def output_convention(session: ort.InferenceSession) -> OutputConvention | None:
    """The convention recorded in the model's metadata at export (None for older exports)."""
    value = session.get_modelmeta().custom_metadata_map.get(OUTPUT_CONVENTION_KEY)
    return OutputConvention(value) if value in set(OutputConvention) else None


def class_names(session: ort.InferenceSession) -> dict[int, str] | None:
    """The model's class names recorded at export (ours, or Ultralytics' own ``names``), or None."""
    meta = session.get_modelmeta().custom_metadata_map
    if CLASS_NAMES_KEY in meta:
        return {int(k): v for k, v in json.loads(meta[CLASS_NAMES_KEY]).items()}
    if "names" in meta:  # an Ultralytics export: a Python dict literal
        with contextlib.suppress(ValueError, SyntaxError):
            names = ast.literal_eval(meta["names"])
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
    return None


def coco_class_names(data: str | Path, detector: OnnxDetector) -> dict[int, str] | None:
    """The class names to map a COCO json's categories by (None when ``data`` is not a json)."""
    if not is_coco_json(Path(data)):
        return None
    names = class_names(detector.session)
    if names is None:
        raise InputError(
            f"{detector.path.name} records no class names, so the categories of {data} cannot be "
            "mapped to its classes; re-export it with this version (quantsweep schemes)"
        )
    return names


class OnnxDetector:
    """An ONNX Runtime session with the input checks and decoding the evaluation needs."""

    def __init__(self, path: Path, *, provider: str = "CPUExecutionProvider", imgsz: int) -> None:
        if not Path(path).is_file():
            raise InputError(f"candidate model not found: {path}")
        self.path = Path(path)
        self.session = open_session(Path(path), provider=provider)
        self.convention = output_convention(self.session)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        size = inp.shape[2:4]
        if all(isinstance(d, int) for d in size) and tuple(size) != (imgsz, imgsz):
            raise InputError(
                f"{self.path.name} takes {size[0]}x{size[1]} inputs, but the data is prepared at "
                f"{imgsz}x{imgsz}"
            )

    def _run(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: image})[0]

    def head_output(self, images: torch.Tensor) -> HeadOutput:
        """Outputs of all images as a HeadOutput (either convention)."""
        raw = np.concatenate([self._run(image[None].numpy()) for image in images])
        tensor = torch.from_numpy(raw)
        if self.convention is OutputConvention.RTDETR:  # [N, K, 6], normalised xywh
            empty = torch.zeros(0)
            dets = rtdetr_detections(tensor, imgsz=images.shape[-1])
            return HeadOutput(raw=tensor, boxes=empty, scores=empty, detections=dets)
        if tensor.shape[-1] == 6 and tensor.shape[1] != 6:  # [N, K, 6] end-to-end
            empty = torch.zeros(0)
            return HeadOutput(raw=tensor, boxes=empty, scores=empty, detections=tensor)
        return HeadOutput.from_raw(tensor, boxes_are_xywh=True)

    def latency(self, image: torch.Tensor, *, warmup: int = 3, runs: int = 20) -> Latency:
        """Median and p90 of ``runs`` timed single-image runs after ``warmup`` untimed ones."""
        sample = image[None].numpy()
        for _ in range(warmup):
            self._run(sample)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self._run(sample)
            times.append((time.perf_counter() - start) * 1000)
        median = statistics.median(times)
        p90 = float(np.percentile(times, 90))
        return Latency(self.session.get_providers()[0], median, p90, 1000.0 / median, runs)


@dataclass(frozen=True)
class Accuracy:
    """mAP against labels (when given) and against the FP32 model's own detections."""

    map50_95_gt: float | None
    map50_gt: float | None
    map50_95_vs_fp32: float
    map50_vs_fp32: float

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def detections_of(detector: OnnxDetector, batch: Batch, detect: DetectConfig) -> list[np.ndarray]:
    """Decoded detections for every image of ``batch``."""
    return decode(detector.head_output(batch.images), detect)


def accuracy(detections: list[np.ndarray], *, batch: Batch, pseudo: list[np.ndarray]) -> Accuracy:
    """Score detections against labels and against the FP32 pseudo-labels."""
    gt = mean_average_precision(detections, batch.labels) if batch.labels is not None else None
    vs_fp32: MapResult = mean_average_precision(detections, pseudo)
    return Accuracy(
        map50_95_gt=None if gt is None else gt.map50_95,
        map50_gt=None if gt is None else gt.map50,
        map50_95_vs_fp32=vs_fp32.map50_95,
        map50_vs_fp32=vs_fp32.map50,
    )
