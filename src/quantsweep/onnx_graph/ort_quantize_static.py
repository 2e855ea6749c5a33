"""ONNX Runtime's own quantization tool (``quantize_static``): the baseline a user of ONNX Runtime would
make without quantsweep, scored beside quantsweep's artifacts on the ``ort-cpu`` target."""

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

from quantsweep.onnx_graph.export import INPUT_NAME


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
    """``quantize_static`` in QDQ format, min-max calibration, per-channel symmetric INT8 weights.

    INT8 uses asymmetric UINT8 activations, as ONNX Runtime recommends on x86 (with signed
    activations version 1.32 writes an invalid graph for these models: a QuantizeLinear with INT8
    output and a UINT8 zero point). With no ``op_types`` every op type ONNX Runtime can quantize is
    quantized; for YOLO that also quantizes the output Concat of pixel boxes and 0..1 scores under
    one scale (measured: mAP 0.0 on the testbed), so the baseline passes ``("Conv",)``.
    """
    weights = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QInt8
    acts = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QUInt8
    quantize_static(
        str(fp32_path),
        str(out_path),
        _Images(images),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types) if op_types else None,
        per_channel=not fp8,
        weight_type=weights,
        activation_type=acts,
        nodes_to_exclude=list(nodes_to_exclude),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": fp8, "WeightSymmetric": True},
    )
    return out_path
