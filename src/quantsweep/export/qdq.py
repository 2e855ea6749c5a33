"""Write Q/DQ nodes so that each weighted node runs at exactly its assigned precision.

Weights become INT4/INT8/FP8 initializers (UINT4/UINT8 with zero points for asymmetric grids)
feeding DequantizeLinear (scale per output channel, per tensor, or per block of input channels),
and corrected biases replace the node's bias. Quantized activations get a QuantizeLinear/DequantizeLinear
pair owned by the one consumer, so a node kept in float that reads the same tensor sees the
float tensor: no Q/DQ leaks onto excluded nodes. Codes, scales, zero points and biases come from
the same ``QuantizedWeight`` record Torch fake quantization uses, so both compute the same numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from quantsweep.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.quant.numerics import ActRange, act_qparams, quantize_weight_codes
from quantsweep.quant.weights import QuantizedWeight

_NUMPY_CODES = {WeightDtype.INT8: np.int8, WeightDtype.INT4: ml_dtypes.int4}
_NUMPY_UNSIGNED = {WeightDtype.INT8: np.uint8, WeightDtype.INT4: ml_dtypes.uint4}
_ACT_ZERO = {
    ActDtype.INT8: TensorProto.INT8,
    ActDtype.UINT8: TensorProto.UINT8,
    ActDtype.FP8: TensorProto.FLOAT8E4M3FN,
}


@dataclass(frozen=True)
class NodePlan:
    """The precision of one ONNX node; a range (``act_range``, else ``act_amax``) for quantized inputs."""

    fmt: QuantFormat
    act_amax: float | ActRange | None = None
    act_range: ActRange | None = None


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


def _act_qdq(node: onnx.NodeProto, source: str, plan: NodePlan):
    base = f"{node.name}/input"
    scale_value, zero_point = act_qparams(
        plan.act_range if plan.act_range is not None else plan.act_amax, plan.fmt.act
    )
    scale = np.array(scale_value, dtype=np.float32)
    inits = [
        numpy_helper.from_array(scale, f"{base}_scale"),
        helper.make_tensor(f"{base}_zero_point", _ACT_ZERO[plan.fmt.act], [], [zero_point]),
    ]
    names = [i.name for i in inits]
    q = helper.make_node(
        "QuantizeLinear", [source, *names], [f"{base}_quantized"], name=f"{base}_QuantizeLinear"
    )
    dq = helper.make_node(
        "DequantizeLinear",
        [f"{base}_quantized", *names],
        [f"{base}_dequantized"],
        name=f"{base}_DequantizeLinear",
    )
    return inits, [q, dq]


def _shared_weight_plans(graph: onnx.GraphProto, plans: Mapping[str, NodePlan]) -> dict[str, tuple]:
    """Unplanned weighted nodes reading a planned node's weight -> (its plan, its DQ output name).

    A Torch layer called several times (RT-DETR's query_pos_head) is one weight read by several
    nodes; Torch quantizes every call, so every node reads the one dequantized weight.
    """
    owner = {n.input[1]: n.name for n in graph.node if n.name in plans and len(n.input) > 1}
    return {
        n.name: (plans[owner[n.input[1]]], f"{owner[n.input[1]]}/weight_dequantized")
        for n in graph.node
        if n.name not in plans
        and n.op_type in ("Conv", "Gemm", "MatMul")
        and len(n.input) > 1
        and n.input[1] in owner
    }


def _bias_init(node: onnx.NodeProto, record: QuantizedWeight | None) -> onnx.TensorProto | None:
    """The corrected bias as a new initializer wired into the node (None when the record keeps it)."""
    if record is None or record.bias is None:
        return None
    init = numpy_helper.from_array(
        record.bias.detach().cpu().numpy().astype(np.float32), f"{node.name}/bias_corrected"
    )
    if len(node.input) > 2:
        node.input[2] = init.name
    else:
        node.input.append(init.name)
    return init


def materialize(
    model: onnx.ModelProto,
    plans: Mapping[str, NodePlan],
    weights: Mapping[str, QuantizedWeight] | None = None,
) -> onnx.ModelProto:
    """A copy of the FP32 ``model`` with ``plans`` (ONNX node name -> precision) applied.

    ``weights`` (ONNX node name -> record) gives precomputed codes, scales, zero points and
    corrected biases; nodes without one are rounded to nearest here.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    missing = set(plans) - {node.name for node in graph.node}
    if missing:
        raise KeyError(f"nodes not in the model: {sorted(missing)}")
    initializers = {init.name: init for init in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    new_inits, new_nodes, dropped = [], [], set()
    shared = _shared_weight_plans(graph, plans)
    for node in graph.node:
        plan = plans.get(node.name)
        if plan is None and node.name in shared:  # another call of a planned layer: same weight DQ
            plan, dq_output = shared[node.name]
            node.input[1] = dq_output
        elif plan is not None:
            weight_name = node.input[1]
            record = None if weights is None else weights.get(node.name)
            inits, dq = weight_dq(node, numpy_helper.to_array(initializers[weight_name]), plan.fmt, record)
            new_inits += inits
            old_bias = node.input[2] if len(node.input) > 2 else None
            bias = _bias_init(node, record)
            if bias is not None:
                new_inits.append(bias)
                if old_bias and uses[old_bias] == 1:
                    dropped.add(old_bias)
            new_nodes.append(dq)
            node.input[1] = dq.output[0]
            if uses[weight_name] == 1 + sum(1 for _, out in shared.values() if out == dq.output[0]):
                dropped.add(weight_name)
        if plan is not None and plan.fmt.act is not ActDtype.FP16:
            if plan.act_amax is None and plan.act_range is None:
                raise ValueError(f"{node.name}: activation quantization needs a calibrated range")
            inits, qdq = _act_qdq(node, node.input[0], plan)
            new_inits += inits
            new_nodes += qdq
            node.input[0] = qdq[1].output[0]
        new_nodes.append(node)
    kept_inits = [init for init in graph.initializer if init.name not in dropped]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    return out
