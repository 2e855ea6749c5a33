"""One activation range per group of tensors that only move or concatenate into each other.

A conv's input is often a Concat of tensors other convs read too (C2f, SPPF, the PANet neck), or a
Split/Slice/MaxPool/upsample of one. With a range per conv input, the same values reach the runtime
on several grids: each tensor is requantized on every path (OpenVINO runs those as separate
FakeQuantize nodes and its convs write bf16 instead of UINT8; ONNX Runtime rescales inside
QLinearConcat). NNCF unifies the scales of such tensors; so does this module: every quantized
input that lies in one group of tensors joined by value-moving ops and Concats gets the union of
their calibrated ranges, in the Torch simulation and in the written graph alike, so that the
runtime can quantize each tensor once, where it is produced.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from quantsweep.onnx_graph.qdq_graph import readers_of
from quantsweep.onnx_graph.qdq_propagation import SHAPE_READERS, moves_values
from quantsweep.quant.numerics import ActRange


class _Groups:
    """Union-find over tensor names."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        root = name
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        self.parent[name] = root
        return root

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def tensor_groups(fp32: onnx.ModelProto) -> _Groups:
    """Tensors joined through value-moving ops (outputs with their input) and Concats (all inputs
    with the output), in an FP32 graph."""
    groups = _Groups()
    inits = {init.name for init in fp32.graph.initializer}
    for node in fp32.graph.node:
        if node.op_type == "Concat":
            sources = [name for name in node.input if name and name not in inits]
        elif moves_values(node):
            sources = [node.input[0]]
        else:
            continue
        for out in node.output:
            for source in sources:
                groups.union(out, source)
    return groups


def _layers_by_group(fp32: onnx.ModelProto, nodes: Mapping[str, str]) -> tuple[_Groups, dict[str, list[str]]]:
    """The tensor groups, and the layers (keys of ``nodes``) reading each group, by group root."""
    groups = tensor_groups(fp32)
    reads = {node.name: node.input[0] for node in fp32.graph.node if node.input}
    by_root: dict[str, list[str]] = {}
    for layer, node in nodes.items():
        if node in reads:
            by_root.setdefault(groups.find(reads[node]), []).append(layer)
    return groups, by_root


def input_groups(fp32: onnx.ModelProto, nodes: Mapping[str, str]) -> list[list[str]]:
    """Layer names (keys of ``nodes``, layer -> ONNX node) whose inputs share one group, for every
    group of two or more; in graph order."""
    _, by_root = _layers_by_group(fp32, nodes)
    return [members for members in by_root.values() if len(members) > 1]


def shared_ranges(
    fp32: onnx.ModelProto, ranges: Mapping[str, ActRange], nodes: Mapping[str, str]
) -> dict[str, ActRange]:
    """``ranges`` (layer -> calibrated input range) with every group's members set to the union of
    the group's ranges (see the module docstring); layers outside groups keep their own."""
    shared = dict(ranges)
    for members in input_groups(fp32, {n: nodes[n] for n in ranges if n in nodes}):
        found = [ranges[n] for n in members]
        union = ActRange(min(r.lo for r in found), max(r.hi for r in found), max(r.amax for r in found))
        shared.update(dict.fromkeys(members, union))
    return shared


# float readers a producer quantizer may serve: residual Adds (attention's MatMuls stay float)
RESIDUAL_READERS = frozenset({"Add"})


def _float_readers(tensor: str, readers: Mapping[str, list], members: set[str]) -> set[str]:
    """Op types, other than group members, value-moving ops, Concats and shape readers, that read
    ``tensor`` directly or after value-moving ops and Concats."""
    pending, seen, found = [tensor], set(), set()
    while pending:
        current = pending.pop()
        seen.add(current)
        for reader in readers.get(current, []):
            if reader.op_type in SHAPE_READERS or (reader.name in members and reader.input[0] == current):
                continue
            if moves_values(reader) or reader.op_type == "Concat":
                pending.extend(out for out in reader.output if out not in seen)
            else:
                found.add(reader.op_type)
    return found


def producer_tensors(fp32: onnx.ModelProto, nodes: Mapping[str, str]) -> dict[str, list[str]]:
    """``{tensor: layers}``: tensors made by a computing op (not a value-moving op or Concat) in a
    group that ``layers`` (keys of ``nodes``) read, which some other op reads as a float too (a
    residual Add, and nothing else). Quantizing them where they are produced lets a runtime keep
    one quantizer per tensor; the Torch simulation then quantizes the module output
    (``quant.producer_quant``)."""
    groups, by_root = _layers_by_group(fp32, nodes)
    readers = readers_of(fp32)
    graph_outputs = {out.name for out in fp32.graph.output}
    found = {}
    for node in fp32.graph.node:
        if moves_values(node) or node.op_type in ("Concat", "Constant", *SHAPE_READERS):
            continue
        for tensor in node.output:
            layers = by_root.get(groups.find(tensor))
            if not layers or tensor in graph_outputs:
                continue
            members = {nodes[n] for n in layers}
            float_ops = _float_readers(tensor, readers, members)
            if float_ops and float_ops <= RESIDUAL_READERS:
                found[tensor] = layers
    return found
