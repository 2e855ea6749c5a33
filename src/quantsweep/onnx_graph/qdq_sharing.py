"""Quantize each tensor once, where it is produced: the Q/DQ form OpenVINO runs fastest.

OpenVINO turns every QuantizeLinear/DequantizeLinear pair into a FakeQuantize and fuses it into the
op that produces its input, so the conv writes UINT8 codes. A tensor quantized separately for each
reader (the conv input placement), or requantized after a Split or a Concat, leaves FakeQuantize
nodes it cannot fuse: they run on their own, in bf16, and the conv before them writes bf16. NNCF's
graphs have one FakeQuantize per tensor. With the ranges of a group shared
(:mod:`quantsweep.onnx_graph.scale_groups`) this pass rewrites a Q/DQ graph into that form without
changing a value any node computes:

- identical QuantizeLinear (same tensor, same grid) and DequantizeLinear nodes are merged;
- a Q/DQ of a tensor already on that grid (the output of a Split, MaxPool, nearest Resize or
  Concat of dequantized codes with the same parameters) is dropped;
- a float tensor whose every reader quantizes it on one grid, directly or after value-moving ops,
  is quantized once before them instead.
"""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import helper, numpy_helper

from quantsweep.onnx_graph.qdq_graph import topological_sort
from quantsweep.onnx_graph.qdq_propagation import SHAPE_READERS, moves_values, source_dqs

Grid = tuple[float, int, int]  # scale, zero point, element type


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {init.name: init for init in model.graph.initializer}
        self.outputs = {out.name for out in model.graph.output}
        self.index()

    def index(self) -> None:
        self.producer = {out: node for node in self.model.graph.node for out in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.model.graph.node:
            for name in node.input:
                self.readers[name].append(node)

    def grid(self, node: onnx.NodeProto) -> Grid | None:
        """The per-tensor grid of an activation Q or DQ (None for weights and per-channel ones)."""
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[0] in self.inits:
            return None
        if len(node.input) < 3 or node.input[1] not in self.inits or node.input[2] not in self.inits:
            return None
        scale = numpy_helper.to_array(self.inits[node.input[1]])
        zero = self.inits[node.input[2]]
        if scale.size != 1:
            return None
        return float(scale.reshape(())), int(numpy_helper.to_array(zero).reshape(())), zero.data_type

    def on_grid(self, tensor: str) -> Grid | None:
        """The grid every value of ``tensor`` lies on: a DQ's output, or a value-moving op or Concat
        whose inputs all lie on one grid."""
        dqs = source_dqs(tensor, self.producer, self.inits)
        grids = {self.grid(dq) for dq in dqs or ()}
        return grids.pop() if len(grids) == 1 else None

    def bypass(self, q: onnx.NodeProto, tensor: str) -> None:
        """Readers of ``q``'s DQs read ``tensor`` instead; ``q`` and its DQs are removed."""
        for dq in list(self.readers[q.output[0]]):
            for reader in list(self.readers[dq.output[0]]):
                reader.input[:] = [tensor if n == dq.output[0] else n for n in reader.input]
            self.remove(dq)
        self.remove(q)

    def remove(self, node: onnx.NodeProto) -> None:
        self.model.graph.node.remove(node)
        self.index()


def _merge_duplicates(graph: _Graph, op_type: str) -> bool:
    first: dict[tuple, str] = {}
    changed = False
    for node in list(graph.model.graph.node):
        grid = graph.grid(node) if node.op_type == op_type else None
        if grid is None:
            continue
        key = (node.input[0], grid)
        if key not in first:
            first[key] = node.output[0]
            continue
        if node.output[0] in graph.outputs:
            continue
        for reader in list(graph.readers[node.output[0]]):
            reader.input[:] = [first[key] if n == node.output[0] else n for n in reader.input]
        graph.remove(node)
        changed = True
    return changed


def _requantizes(graph: _Graph, q: onnx.NodeProto, grid: Grid) -> bool:
    """``q`` quantizes on ``grid`` and only DQs on that grid read it."""
    readers = graph.readers[q.output[0]]
    return graph.grid(q) == grid and bool(readers) and all(graph.grid(r) == grid for r in readers)


def _drop_requantization(graph: _Graph) -> bool:
    for node in list(graph.model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in graph.outputs:
            continue
        if node.input[0] not in graph.producer:
            continue
        grid = graph.on_grid(node.input[0])
        if grid is not None and _requantizes(graph, node, grid):
            graph.bypass(node, node.input[0])
            return True
    return False


def _quantized_downstream(graph: _Graph, tensor: str, grid: Grid) -> bool:
    """Every reader of ``tensor`` quantizes it on ``grid``, directly or after value-moving ops."""
    readers = [r for r in graph.readers[tensor] if r.op_type not in SHAPE_READERS]
    if not readers or tensor in graph.outputs:
        return False
    for reader in readers:
        if reader.op_type == "QuantizeLinear":
            if not _requantizes(graph, reader, grid):
                return False
        elif not (moves_values(reader) and reader.input[0] == tensor) or not all(
            _quantized_downstream(graph, out, grid) for out in reader.output
        ):
            return False
    return True


def _first_q(graph: _Graph, tensor: str) -> onnx.NodeProto:
    for reader in graph.readers[tensor]:
        if reader.op_type == "QuantizeLinear":
            return reader
        found = next((_first_q(graph, out) for out in reader.output), None)
        if found is not None:
            return found
    return None


def _hoist(graph: _Graph) -> bool:
    for node in list(graph.model.graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or moves_values(node):
            continue
        for tensor in node.output:
            movers = [r for r in graph.readers[tensor] if moves_values(r)]
            q = _first_q(graph, tensor) if movers else None
            if q is None or not _quantized_downstream(graph, tensor, graph.grid(q)):
                continue
            _quantize_at(graph, tensor, q)
            return True
    return False


def _quantize_at(graph: _Graph, tensor: str, model_q: onnx.NodeProto) -> None:
    """One Q/DQ on ``tensor`` with ``model_q``'s parameters; the Qs downstream of it are dropped."""
    params = list(model_q.input[1:])
    q = helper.make_node(
        "QuantizeLinear", [tensor, *params], [f"{tensor}/shared_q"], name=f"{tensor}/shared_Q"
    )
    dq = helper.make_node(
        "DequantizeLinear", [q.output[0], *params], [f"{tensor}/shared_dq"], name=f"{tensor}/shared_DQ"
    )
    readers = [r for r in graph.readers[tensor] if r.op_type not in SHAPE_READERS]
    graph.model.graph.node.extend([q, dq])
    for reader in readers:
        reader.input[:] = [dq.output[0] if n == tensor else n for n in reader.input]
    graph.index()
    pending = [dq.output[0]]
    while pending:
        current = pending.pop()
        for reader in list(graph.readers[current]):
            if reader.op_type == "QuantizeLinear":
                graph.bypass(reader, current)
            elif moves_values(reader):
                pending.extend(reader.output)


def share_quantizers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each activation quantized once per grid (see the module docstring); the values
    every node computes are unchanged. Edits ``model`` in place and returns it."""
    graph = _Graph(model)
    changed = True
    while changed:
        changed = _merge_duplicates(graph, "QuantizeLinear") | _merge_duplicates(graph, "DequantizeLinear")
        changed |= _drop_requantization(graph) or _hoist(graph)
    available = {i.name for i in model.graph.input} | set(graph.inits)
    nodes = topological_sort(list(model.graph.node), available)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
