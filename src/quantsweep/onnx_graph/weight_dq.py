"""A weight's stored form: INT4/INT8/FP8 codes (UINT4/UINT8 with zero points for asymmetric grids)
feeding a DequantizeLinear (scale per output channel, per tensor, or per block of input channels).

Codes, scales and zero points come from the same ``QuantizedWeight`` record Torch fake
quantization uses, so both compute the same numbers. The graph edits around it (activation Q/DQ,
shared weights, biases) are ``onnx_graph.qdq_graph.QdqEditor``'s, placed by ``onnx_graph.placement``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from quantsweep.core.config import Granularity, QuantFormat, WeightDtype
from quantsweep.quant.numerics import quantize_weight_codes
from quantsweep.quant.weights import QuantizedWeight

_NUMPY_CODES = {WeightDtype.INT8: np.int8, WeightDtype.INT7: np.int8, WeightDtype.INT4: ml_dtypes.int4}
_NUMPY_UNSIGNED = {WeightDtype.INT8: np.uint8, WeightDtype.INT7: np.uint8, WeightDtype.INT4: ml_dtypes.uint4}


def _codes_array(codes: torch.Tensor, weight: WeightDtype, *, unsigned: bool = False) -> np.ndarray:
    if weight is WeightDtype.FP8:
        return codes.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    return codes.cpu().numpy().astype((_NUMPY_UNSIGNED if unsigned else _NUMPY_CODES)[weight])


def _scale_for_onnx(scale: torch.Tensor, fmt: QuantFormat) -> tuple[np.ndarray, dict[str, int]]:
    scale = scale.detach().cpu()
    if fmt.granularity is Granularity.PER_LAYER:
        return scale.reshape(()).numpy().astype(np.float32), {}
    if fmt.int4_block_size:
        return scale[:, :: fmt.int4_block_size].numpy().astype(np.float32), {
            "axis": 1,
            "block_size": fmt.int4_block_size,
        }
    return scale.reshape(-1).numpy().astype(np.float32), {"axis": 0}


def _stored_in_out(node: onnx.NodeProto) -> bool:
    """True when the node's weight is stored ``[in, out]`` (MatMul; Gemm without ``transB``).

    Torch keeps Linear weights ``[out, in]`` and quantizes per output channel; such a weight is
    quantized in Torch's layout and its scales go on ONNX axis 1 (blocks on axis 0).
    """
    if node.op_type == "MatMul":
        return True
    if node.op_type == "Gemm":
        return not any(a.name == "transB" and a.i for a in node.attribute)
    return False


def _transposed_scale(scale_array: np.ndarray, attrs: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
    if not attrs:  # one scale per tensor
        return scale_array, attrs
    return np.ascontiguousarray(scale_array.T), {**attrs, "axis": 1 - attrs["axis"]}


def weight_dq(
    node: onnx.NodeProto, weight: np.ndarray, fmt: QuantFormat, record: QuantizedWeight | None = None
):
    """Initializers (codes, scale, zero point) and the DequantizeLinear that replace ``weight``:
    from ``record`` (a quantizer's codes, made in Torch's layout) when given, else round to nearest."""
    transposed = weight.ndim == 2 and _stored_in_out(node)
    torch_layout = weight.T if transposed else weight
    if record is None:
        codes, scale = quantize_weight_codes(torch.from_numpy(torch_layout.copy()), fmt)
        record = QuantizedWeight(codes, scale, None, fmt)
    if tuple(record.codes.shape) != torch_layout.shape:
        raise ValueError(f"{node.name}: quantized weight {tuple(record.codes.shape)} != {torch_layout.shape}")
    code_array = _codes_array(record.codes, fmt.weight, unsigned=record.unsigned)
    scale_array, attrs = _scale_for_onnx(record.scale, fmt)
    zero = np.zeros(scale_array.shape, dtype=code_array.dtype)
    if record.zero_point is not None:
        zero = _scale_for_onnx(record.zero_point, fmt)[0].round().astype(code_array.dtype)
    if transposed:
        code_array = np.ascontiguousarray(code_array.T)
        zero = _transposed_scale(zero, attrs)[0]
        scale_array, attrs = _transposed_scale(scale_array, attrs)
    base = f"{node.name}/weight"
    inits = [
        numpy_helper.from_array(code_array, f"{base}_quantized"),
        numpy_helper.from_array(scale_array, f"{base}_scale"),
        numpy_helper.from_array(zero, f"{base}_zero_point"),
    ]
    dq = helper.make_node(
        "DequantizeLinear",
        [i.name for i in inits],
        [f"{base}_dequantized"],
        name=f"{base}_DequantizeLinear",
        **attrs,
    )
    return inits, dq
