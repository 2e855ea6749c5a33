"""Keep quantized tensors quantized through ops that only move values (Split, MaxPool, Resize, ...).

A Q/DQ graph written for the convs alone dequantizes a conv's output before a Split, a MaxPool or
an upsample and quantizes again at the next conv; the op between runs in float, and a Concat of
such float tensors runs in float too. These ops only move values, so their outputs lie on the grid
of their input: a QuantizeLinear with the input's own scale and zero point after them is exact,
and with it a runtime can run them on the codes (ONNX Runtime's QDQ transformer drops the DQ/Q pair
around Split, MaxPool, Resize, Reshape, Transpose and Slice, and fuses ``DQ... -> Concat -> Q`` into
QLinearConcat). The values every other node reads do not change, so what Torch simulates is still
what the runtime computes; only less of it runs in float.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Mapping

import onnx
from onnx import helper

from quantsweep.onnx_graph.qdq_graph import topological_sort

# ops whose every output value is one of their input values (for Resize: nearest mode only)
VALUE_MOVERS = frozenset({"Split", "Slice", "MaxPool", "Resize", "Reshape", "Transpose", "Flatten"})
# readers of a tensor's shape only (the export computes C2f's chunk sizes from it), not its values
SHAPE_READERS = frozenset({"Shape", "Size"})


def moves_values(node: onnx.NodeProto) -> bool:
    """True for an op whose every output value is one of its input values (Resize: nearest only)."""
    if node.op_type not in VALUE_MOVERS:
        return False
    if node.op_type == "Resize":
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
        return mode == "nearest"
    return True


def source_dqs(
    tensor: str, producer: Mapping[str, onnx.NodeProto], inits: Container[str]
) -> list[onnx.NodeProto] | None:
    """The DequantizeLinear nodes whose outputs ``tensor``'s values are, directly or through
    value-moving ops and Concats; None where a path reaches any other op (or the graph input)."""
    found, pending, seen = [], [tensor], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        node = producer.get(current)
        if node is None:
            return None
        if node.op_type == "DequantizeLinear":
            found.append(node)
        elif moves_values(node):
            pending.append(node.input[0])
        elif node.op_type == "Concat":
            pending.extend(name for name in node.input if name and name not in inits)
        else:
            return None
    return found


class _Graph:
    """Producer and reader maps of a graph being edited."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {init.name for init in model.graph.initializer}
        self.outputs = {out.name for out in model.graph.output}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for name in node.input:
                self.readers[name].append(node)
        self.new_nodes: list[onnx.NodeProto] = []

    def activation_dq(self, tensor: str) -> onnx.NodeProto | None:
        """The DequantizeLinear producing ``tensor`` when it dequantizes an activation (not a weight)."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] in self.inits:
            return None
        return node

    def add(self, node: onnx.NodeProto) -> None:
        self.new_nodes.append(node)
        for out in node.output:
            self.producer[out] = node
        for name in node.input:
            self.readers[name].append(node)

    def rewire(self, reader: onnx.NodeProto, old: str, new: str) -> None:
        reader.input[:] = [new if name == old else name for name in reader.input]
        self.readers[old] = [r for r in self.readers[old] if r is not reader]
        self.readers[new].append(reader)


def _private_dq(graph: _Graph, dq: onnx.NodeProto, reader: onnx.NodeProto) -> None:
    """Give ``reader`` a DequantizeLinear of its own (runtimes fuse a DQ only into its sole reader)."""
    if len(graph.readers[dq.output[0]]) <= 1:
        return
    copy = helper.make_node(
        "DequantizeLinear",
        list(dq.input),
        [f"{dq.output[0]}/for_{reader.name}"],
        name=f"{dq.name}/for_{reader.name}",
    )
    copy.attribute.extend(dq.attribute)
    graph.add(copy)
    graph.rewire(reader, dq.output[0], copy.output[0])


def carry_codes_through_movers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a Q/DQ graph) with a Q/DQ of the input's parameters on every output of each
    value-moving op that reads a dequantized activation, and, for every Concat that only a
    QuantizeLinear reads, that Q's parameters on its float inputs and a private DQ on each input;
    numerically the same graph (see the module docstring). Edits ``model`` in place, returns it."""
    graph = _Graph(model)
    for node in list(model.graph.node):  # topological: a carried output makes its readers eligible
        if moves_values(node):
            _carry(graph, node)
        elif node.op_type == "Concat":
            _quantize_concat_inputs(graph, node)
    if graph.new_nodes:
        available = {i.name for i in model.graph.input} | graph.inits
        nodes = topological_sort([*model.graph.node, *graph.new_nodes], available)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model


def _requantize(
    graph: _Graph, tensor: str, params: list[str], readers: list[onnx.NodeProto], *, tag: str
) -> None:
    """One QuantizeLinear of ``tensor`` with ``params`` (scale, zero point), and a DequantizeLinear
    of it for each of ``readers``, which read that instead of ``tensor``."""
    q = helper.make_node("QuantizeLinear", [tensor, *params], [f"{tensor}/{tag}_q"], name=f"{tensor}/{tag}_Q")
    graph.add(q)
    for reader in readers:
        back = helper.make_node(
            "DequantizeLinear",
            [q.output[0], *params],
            [f"{tensor}/{tag}_dq_{reader.name}"],
            name=f"{tensor}/{tag}_DQ_{reader.name}",
        )
        graph.add(back)
        graph.rewire(reader, tensor, back.output[0])


def _quantize_concat_inputs(graph: _Graph, node: onnx.NodeProto) -> None:
    """Concat whose output only a QuantizeLinear reads: every input through that Q's parameters.

    Quantizing elementwise commutes with concatenation, so a float input quantized with the output
    Q's parameters gives the codes the output Q gives; with every input dequantized, a runtime
    concatenates codes (QLinearConcat) and the op that made a float input (a residual Add) can end
    in a Q of its own.
    """
    readers = graph.readers[node.output[0]]
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or node.output[0] in graph.outputs:
        return
    params = list(readers[0].input[1:])
    for name in list(dict.fromkeys(node.input)):
        dq = graph.activation_dq(name)
        if dq is not None:
            _private_dq(graph, dq, node)
        elif name not in graph.inits and name in graph.producer:
            _requantize(graph, name, params, [node], tag=f"to_{node.name}")


def _carry(graph: _Graph, node: onnx.NodeProto) -> None:
    """A value-moving op reading a dequantized activation: its outputs re-quantized on the same grid."""
    dq = graph.activation_dq(node.input[0])
    if dq is None or any(out in graph.outputs for out in node.output):
        return
    _private_dq(graph, dq, node)
    params = list(dq.input[1:])  # activation DQs are per tensor: no axis attribute to copy
    for out in node.output:
        readers = list(graph.readers[out])
        if readers:
            _requantize(graph, out, params, readers, tag="carried")
