"""Read back what precision each weighted node of an ONNX graph really runs at."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from quantsweep.core.config import WeightDtype
from quantsweep.onnx_graph.export import UNQUANTIZED_KEY, WEIGHTED_OPS
from quantsweep.onnx_graph.qdq_propagation import source_dqs
from quantsweep.quant.numerics import INT_LIMITS

_LABELS = {
    TensorProto.INT4: "int4",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.FLOAT8E4M3FN: "fp8",
}
# asymmetric (unsigned, zero-point) weights are still int4/int8 weights: the dtype a scheme names
_WEIGHT_LABELS = {**_LABELS, TensorProto.UINT4: "int4", TensorProto.UINT8: "int8"}
_BITS = {"int4": 4, "int7": 8, "int8": 8, "uint8": 8, "fp8": 8, "float": 32}


def _stored_weight_label(
    stored: onnx.TensorProto, zero_point: onnx.TensorProto | None, *, axis: int = 1
) -> str:
    """The weight type a stored tensor is: INT8 storage whose codes (less their zero point, per
    ``axis`` as DequantizeLinear reads it) all lie in -64..63 is ``int7`` (a full-range INT8 grid
    always puts some channel's maximum past 63)."""
    label = _WEIGHT_LABELS.get(stored.data_type, "other")
    if label != "int8":
        return label
    codes = numpy_helper.to_array(stored).astype(np.int32)
    if zero_point is not None:
        codes = codes - _per_axis(numpy_helper.to_array(zero_point).astype(np.int32), codes.ndim, axis)
    low, high, _ = INT_LIMITS[WeightDtype.INT7]
    return "int7" if codes.size and codes.min() >= low and codes.max() <= high else "int8"


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _dtype_of(name: str, model: onnx.ModelProto) -> int | None:
    for init in model.graph.initializer:
        if init.name == name:
            return init.data_type
    return None


def _weight_initializer(node: onnx.NodeProto, producers, inits) -> tuple[str, str] | None:
    """(initializer holding the weight, stored type label), or None when input 1 is an activation."""
    source = node.input[1]
    if source in inits:
        return source, "float"
    producer = producers.get(source)
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in inits:
        stored = inits[producer.input[0]]
        zero = inits.get(producer.input[2]) if len(producer.input) > 2 else None
        axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
        return stored.name, _stored_weight_label(stored, zero, axis=axis)
    return None


def node_precisions(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """``{node: (weight, activation)}`` for every Conv/Gemm/MatMul with a weight, as the graph says.

    Weight: the type stored behind a DequantizeLinear feeding input 1, else ``float``. Activation:
    the zero-point type of a QuantizeLinear/DequantizeLinear pair feeding input 0, else ``fp16``.
    Activation x activation MatMuls have no weight and are left out.
    """
    producers = _producers(model)
    inits = {init.name: init for init in model.graph.initializer}
    result = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        weight = _weight_initializer(node, producers, inits)
        if weight is None:
            continue
        result[node.name] = (weight[1], _act_label(node.input[0], producers, model, inits))
    return result


def _act_label(tensor: str, producers, model: onnx.ModelProto, inits) -> str:
    """The quantized type ``tensor``'s values lie on: a DequantizeLinear's zero-point type, also
    through value-moving ops and Concats of such tensors (a placement that quantizes each tensor
    once, where it is made: OpenVINO's); else ``fp16``."""
    dqs = source_dqs(tensor, producers, inits)
    labels = {
        _LABELS.get(_dtype_of(dq.input[2], model), "other") if len(dq.input) > 2 else "fp16"
        for dq in dqs or ()
    }
    return labels.pop() if len(labels) == 1 else "fp16"


def precision_label(weight: str, act: str) -> str:
    """Same labels as :class:`quantsweep.schemes.scheme_records.Precision`: ``float`` for float weights.

    A float node may still read a dequantized tensor (in ONNX Runtime's placement the producer's
    output is quantized for the integer ops around it); it computes in float all the same.
    """
    return "float" if weight == "float" else f"{weight}-{act}"


def precision_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many quantizable layers run at each precision label.

    A layer is a weight: nodes sharing one weight (a layer called several times) count once, and
    nodes the export recorded as no quantizable layer's (``UNQUANTIZED_KEY``) are left out.
    """
    meta = {p.key: p.value for p in model.metadata_props}
    skipped = set(json.loads(meta.get(UNQUANTIZED_KEY, "[]")))
    sources = _weight_sources(model)
    layers = {
        sources[node]: precision_label(w, a)
        for node, (w, a) in node_precisions(model).items()
        if node not in skipped
    }
    return dict(sorted(Counter(layers.values()).items()))


def _weight_sources(model: onnx.ModelProto) -> dict[str, str]:
    """Node -> the tensor its weight input reads (a float initializer or a DequantizeLinear output)."""
    return {n.name: n.input[1] for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1}


def average_weight_bits(model: onnx.ModelProto) -> float:
    """Stored bits per weight over all weighted nodes (float weights count 32 bits, as stored)."""
    producers = _producers(model)
    inits = {init.name: init for init in model.graph.initializer}
    total = bits = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        weight = _weight_initializer(node, producers, inits)
        if weight is not None:
            count = int(np.prod(inits[weight[0]].dims))
            total += count
            bits += count * _BITS.get(weight[1], 8)
    return bits / max(total, 1)


def _per_axis(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 1-D per-channel array shaped to broadcast along ``axis`` of an ``ndim``-D tensor."""
    if values.ndim != 1 or ndim <= 1:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _constant_dq(node: onnx.NodeProto | None, inits) -> onnx.NodeProto | None:
    """``node`` when it is a per-tensor or per-channel DequantizeLinear of initializers, else None."""
    if node is None or node.op_type != "DequantizeLinear" or any(i and i not in inits for i in node.input):
        return None
    return None if any(a.name == "block_size" and a.i for a in node.attribute) else node


def dequantized_inputs(model: onnx.ModelProto, node: str) -> dict[int, np.ndarray]:
    """The constant inputs of ``node`` as it computes with them: an initializer as stored, a
    per-tensor or per-channel ``DequantizeLinear`` of initializers as its float output (weights and
    INT32 biases of a quantized conv). Inputs that are activations, or blocked, are left out."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = _producers(model)
    (target,) = [n for n in model.graph.node if n.name == node]
    found = {}
    for index, name in enumerate(target.input):
        if name in inits:
            found[index] = numpy_helper.to_array(inits[name])
            continue
        dq = _constant_dq(producers.get(name), inits)
        if dq is None:
            continue
        attrs = {a.name: a.i for a in dq.attribute}
        codes = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        axis = attrs.get("axis", 1) % max(codes.ndim, 1)
        scale = _per_axis(numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64), codes.ndim, axis)
        zero = 0.0
        if len(dq.input) > 2 and dq.input[2]:
            zero = _per_axis(numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64), codes.ndim, axis)
        found[index] = ((codes - zero) * scale).astype(np.float32)
    return found


def weight_codes(model: onnx.ModelProto, node: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(codes, scale, zero_point)`` of ``node``'s weight as stored behind its DequantizeLinear
    (per channel along the DQ's axis), or None for a float or blocked weight."""
    inits = {i.name: i for i in model.graph.initializer}
    (target,) = [n for n in model.graph.node if n.name == node]
    dq = _constant_dq(_producers(model).get(target.input[1]), inits)
    if dq is None:
        return None
    codes = numpy_helper.to_array(inits[dq.input[0]])
    scale = numpy_helper.to_array(inits[dq.input[1]])
    zero = np.zeros_like(scale)
    if len(dq.input) > 2 and dq.input[2]:
        zero = numpy_helper.to_array(inits[dq.input[2]])
    return codes, scale, zero
