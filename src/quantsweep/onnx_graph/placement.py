"""Q/DQ placements: where a runtime wants quantization around the nodes it runs in low precision.

A placement is data (signedness of activations, output Q, integer bias), applied by one function,
so each backend states its runtime's convention instead of re-implementing graph surgery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx

from quantsweep.core.config import ActDtype
from quantsweep.onnx_graph.calibration import RangeSource
from quantsweep.onnx_graph.qdq_graph import QdqEditor, TensorQuant, readers_of
from quantsweep.onnx_graph.qdq_propagation import carry_codes_through_movers
from quantsweep.onnx_graph.qdq_sharing import share_quantizers
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.producer_quant import ProducerQuant, active_nodes
from quantsweep.quant.weights import QuantizedWeight
from quantsweep.schemes.scheme_records import Precision


@dataclass(frozen=True)
class Placement:
    """How a runtime's fusions want Q/DQ around a quantized node.

    ``asymmetric``: UINT8 activations with a zero point (ONNX Runtime on x86), else signed
    symmetric INT8 (TensorRT, OpenVINO). ``output_q``: a QuantizeLinear on the node's output, the
    pattern ONNX Runtime needs to fuse an integer kernel. ``int32_bias``: the bias as INT32 codes
    with scale ``input_scale * weight_scale``, as integer convolutions take it.
    """

    asymmetric: bool = False
    output_q: bool = False
    int32_bias: bool = False
    # SiLU (Sigmoid, then Mul with its input) after an output-quantized conv also in Q/DQ, so the
    # runtime runs it as QLinearSigmoid + QLinearMul instead of dequantizing to float and back
    fuse_silu: bool = False
    # a Q/DQ of the input's parameters after ops that only move values (Split, MaxPool, ...) and on
    # the inputs of a Concat that is quantized next, so those run on codes; exact (qdq_propagation)
    carry_codes: bool = False
    # each activation quantized once, where it is produced, and never requantized on its own grid
    # (OpenVINO fuses one FakeQuantize per tensor into its producer; qdq_sharing)
    share_quantizers: bool = False

    def quant(self, found: ActRange, act: ActDtype) -> TensorQuant:
        """Per-tensor parameters for a calibrated range."""
        return TensorQuant.from_range(found, act=act, asymmetric=self.asymmetric)

    def written_label(self, label: str) -> str:
        """A plan's precision label as the file shows it (``int8-int8`` is ``int8-uint8`` when asymmetric)."""
        if self.asymmetric and label.endswith("-int8"):
            return label[: -len("int8")] + "uint8"
        return label


def silu_after(fp32: onnx.ModelProto, convs: Sequence[str]) -> list[tuple[str, str]]:
    """``(sigmoid, mul)`` node names of every SiLU, ``y * sigmoid(y)``, applied to a conv in ``convs``."""
    outputs = {n.output[0]: n for n in fp32.graph.node if n.name in set(convs)}
    graph_outputs = {o.name for o in fp32.graph.output}
    readers = readers_of(fp32)
    pairs = []
    for tensor in outputs:
        found = readers.get(tensor, [])
        sigmoid = next((r for r in found if r.op_type == "Sigmoid"), None)
        if sigmoid is None or len(found) != 2:
            continue
        mul = next(
            (r for r in found if r.op_type == "Mul" and set(r.input) == {tensor, sigmoid.output[0]}), None
        )
        if mul is not None and mul.output[0] not in graph_outputs:
            pairs.append((sigmoid.name, mul.name))
    return pairs


_WEIGHTED = ("Conv", "Gemm", "MatMul")


def shared_calls(fp32: onnx.ModelProto, planned: Iterable[str]) -> dict[str, str]:
    """Other calls of a planned layer -> the planned node: nodes outside ``planned`` that read the
    weight initializer a planned node reads (RT-DETR's query_pos_head is one Linear called twice).

    The weight is quantized once and every call reads its DequantizeLinear (``QdqEditor``); Torch
    also quantizes every call's input, so with quantized activations each call's input gets Q/DQ.
    """
    planned = set(planned)
    owner: dict[str, str] = {}
    for node in fp32.graph.node:
        if node.name in planned and node.op_type in _WEIGHTED and len(node.input) > 1:
            owner.setdefault(node.input[1], node.name)
    return {
        node.name: owner[node.input[1]]
        for node in fp32.graph.node
        if node.name not in planned
        and node.op_type in _WEIGHTED
        and len(node.input) > 1
        and node.input[1] in owner
    }


def input_ranges(fp32: onnx.ModelProto, node_ranges: Mapping[str, ActRange]) -> dict[str, ActRange]:
    """Tensor -> range for the inputs of nodes with a calibrated input range (the Torch layer's),
    other calls of the same layer included: Torch quantizes every call with the layer's range."""
    readers = {node.name: node.input[0] for node in fp32.graph.node if node.input}
    known = {n: r for n, r in node_ranges.items() if n in readers}
    calls = shared_calls(fp32, known)
    return {readers[n]: r for n, r in known.items()} | {readers[c]: known[o] for c, o in calls.items()}


def _quantize_producers(
    editor: QdqEditor,
    fp32: onnx.ModelProto,
    producers: Sequence[ProducerQuant],
    *,
    plan: Mapping[str, Precision],
    integer: Sequence[str],
    placement: Placement,
) -> None:
    """Quantize each producer tensor read by an integer node where it is made, for every reader."""
    made_by = {out: node.name for node in fp32.graph.node for out in node.output}
    for producer in active_nodes(producers, set(integer)).values():
        act = next(plan[n].act for n in producer.nodes if n in integer)
        editor.quantize_output(editor.node(made_by[producer.tensor]), placement.quant(producer.range, act))


def apply_placement(
    fp32: onnx.ModelProto,
    plan: Mapping[str, Precision],
    *,
    ranges: RangeSource,
    placement: Placement,
    weights: Mapping[str, QuantizedWeight] | None = None,
    producers: Sequence[ProducerQuant] = (),
) -> onnx.ModelProto:
    """``fp32`` with every planned node at its precision, Q/DQ placed as ``placement`` says.

    ``weights`` (ONNX node -> quantizer record) carries the codes, scales and corrected biases the
    Torch simulation used; nodes without one are rounded to nearest. ``producers`` are tensors the
    Torch simulation quantizes where they are made, for every reader (``quant.producer_quant``),
    while a node reading them is quantized.
    """
    weights = weights or {}
    order = [node.name for node in fp32.graph.node]
    missing = sorted(set(plan) - set(order))
    if missing:  # a plan made for another export of the model
        raise KeyError(f"nodes not in the model: {missing}")

    planned = [name for name in order if name in plan and plan[name].weight is not None]
    with_acts = [name for name in planned if plan[name].act is not ActDtype.FP16]
    calls = {n: o for n, o in shared_calls(fp32, planned).items() if o in with_acts}
    integer = [n for n in with_acts if plan[n].act is not ActDtype.FP8]
    silus = silu_after(fp32, integer) if placement.output_q and placement.fuse_silu else []
    kept_float = frozenset(name for name, precision in plan.items() if precision.weight is None)
    editor = QdqEditor(fp32, planned=frozenset(with_acts).union(calls, *silus), keep_float=kept_float)
    nodes = [editor.node(name) for name in with_acts]
    call_nodes = [editor.node(name) for name in calls]
    outputs = ({n.output[0] for n in nodes} - editor.outputs) if placement.output_q else set()
    silu_nodes = [editor.node(name) for pair in silus for name in pair]
    found = ranges({n.input[0] for n in nodes + call_nodes} | outputs | {n.output[0] for n in silu_nodes})
    for node in nodes:
        act = plan[node.name].act
        quant = placement.quant(found[node.input[0]], act)
        scale = editor.quantize_weight(node, plan[node.name].as_format(), weights.get(node.name))
        if placement.int32_bias:
            editor.quantize_bias(node, input_scale=quant.scale, weight_scale=scale)
        editor.quantize_input(node, quant)
    for node in call_nodes:  # its weight is the planned call's; its input is its own
        editor.quantize_input(node, placement.quant(found[node.input[0]], plan[calls[node.name]].act))
    for node in nodes:
        if node.output[0] in outputs:
            editor.quantize_output(node, placement.quant(found[node.output[0]], plan[node.name].act))
    for node in silu_nodes:  # Sigmoid first, then Mul: graph order
        editor.quantize_output(node, placement.quant(found[node.output[0]], ActDtype.INT8))
    _quantize_producers(editor, fp32, producers, plan=plan, integer=integer, placement=placement)
    for name in planned:
        if name not in with_acts:  # weight-only nodes
            editor.quantize_weight(editor.node(name), plan[name].as_format(), weights.get(name))
    model = editor.build()
    if placement.carry_codes:
        model = carry_codes_through_movers(model)
    return share_quantizers(model) if placement.share_quantizers else model
