"""ONNX Runtime's own quantization tool: the whole-model INT8 (W8A8) baseline, and node exclusions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from quantsweep.export.onnx_model import INPUT_NAME


class _Images(CalibrationDataReader):
    def __init__(self, images: torch.Tensor) -> None:
        self._items = iter([{INPUT_NAME: image[None].numpy()} for image in images])

    def get_next(self):
        return next(self._items, None)


def quantize_with_ort(
    fp32_path: Path,
    out_path: Path,
    *,
    images: torch.Tensor,
    fp8: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
) -> Path:
    """``quantize_static`` in QDQ format: symmetric, per-channel weights, min-max calibration.

    With no ``op_types`` every op type ONNX Runtime can quantize is quantized; for YOLO that breaks the
    output (see the materialize stage), so the baseline passes ``("Conv",)``.
    """
    qtype = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QInt8
    quantize_static(
        str(fp32_path),
        str(out_path),
        _Images(images),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types) if op_types else None,
        per_channel=not fp8,
        weight_type=qtype,
        activation_type=qtype,
        nodes_to_exclude=list(nodes_to_exclude),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out_path
