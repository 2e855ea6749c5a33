"""Edit an FP32 ONNX graph into a Q/DQ graph: weights, conv inputs, conv outputs and biases.

Backends decide *where* Q/DQ go (their runtime's placement); this module only knows *how* to
insert them so that the graph stays valid: one QuantizeLinear per source tensor (every consumer
shares the codes), one DequantizeLinear per quantized consumer (runtimes fuse a DQ into the op
that reads it only when that op is its sole reader), float consumers keep reading float, and the
nodes are re-sorted topologically at the end.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantsweep.core.config import ActDtype, QuantFormat
from quantsweep.onnx_graph.weight_dq import weight_dq
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.weights import QuantizedWeight

FP8_MAX = 448.0


@dataclass(frozen=True)
class TensorQuant:
    """Per-tensor quantization of an activation: ``q = round(x / scale) + zero_point``."""

    scale: float
    zero_point: int
    dtype: int  # TensorProto element type: UINT8, INT8 or FLOAT8E4M3FN

    @classmethod
    def from_range(cls, rng: ActRange, *, act: ActDtype, asymmetric: bool) -> TensorQuant:
        """Parameters for a calibrated range: UINT8 over ``[lo, hi]`` (asymmetric), else INT8 or FP8
        symmetric over ``amax`` (which a calibrator may have clipped below the largest value)."""
        if act is ActDtype.FP8:
            return cls(max(rng.amax, 1e-12) / FP8_MAX, 0, TensorProto.FLOAT8E4M3FN)
        if asymmetric:
            low, high = min(rng.lo, 0.0), max(rng.hi, 0.0)  # zero must be exact
            scale = max(high - low, 1e-12) / 255.0
            return cls(scale, int(np.clip(round(-low / scale), 0, 255)), TensorProto.UINT8)
        return cls(max(rng.amax, 1e-12) / 127.0, 0, TensorProto.INT8)


def _zero_point_tensor(name: str, quant: TensorQuant) -> onnx.TensorProto:
    if quant.dtype == TensorProto.FLOAT8E4M3FN:
        data = np.zeros((), dtype=ml_dtypes.float8_e4m3fn)
        return numpy_helper.from_array(data, name)
    return helper.make_tensor(name, quant.dtype, [], [quant.zero_point])


def _base_name(tensor: str, quant: TensorQuant) -> str:
    """Name stem of a tensor's Q/DQ and their parameters (FP8 ones apart from integer ones)."""
    return f"{tensor}/q_fp8" if quant.dtype == TensorProto.FLOAT8E4M3FN else f"{tensor}/q"


def readers_of(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """``{tensor: nodes reading it}``, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def topological_sort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Order ``nodes`` so that every input is produced before it is read (stable otherwise)."""
    producers = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    readers: dict[int, list[int]] = defaultdict(list)
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        for name in {n for n in node.input if n and n not in available and n in producers}:
            readers[producers[name]].append(i)
            waiting[i] += 1
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        ready.sort(reverse=True)  # keep the original order where the graph allows
        i = ready.pop()
        order.append(i)
        for j in readers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        raise ValueError("the edited graph has a cycle")
    return [nodes[i] for i in order]


class QdqEditor:
    """Accumulates Q/DQ edits on a copy of an FP32 model; :meth:`build` returns the edited model."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        planned: frozenset[str] = frozenset(),
        keep_float: frozenset[str] = frozenset(),
    ) -> None:
        self.planned = planned  # nodes that get their own input Q/DQ: they read a private DQ
        # nodes a plan keeps float: they keep reading the float weight when a quantized node shares it
        self.keep_float = keep_float
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.graph = self.model.graph
        self.inits = {init.name: init for init in self.graph.initializer}
        self.nodes = {node.name: node for node in self.graph.node}
        self.readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.readers[name].append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.dropped: set[str] = set()
        # (tensor, element type) -> (Q output, params): a tensor read by an FP8 node and an INT8
        # node (TensorRT's FP8 plans keep depthwise convs at INT8) gets one Q of each type
        self.quantized: dict[tuple[str, int], tuple[str, TensorQuant]] = {}
        # (float weight, digest of its codes, scale and zero point) -> those initializers' names
        self.codes: dict[tuple[str, str], list[str]] = {}
        # weight DQ output -> the float initializer it dequantizes: a node whose input 1 an earlier
        # quantize_weight rewired still finds its weight
        self.sources: dict[str, str] = {}

    def node(self, name: str) -> onnx.NodeProto:
        """The node called ``name`` (KeyError naming it otherwise)."""
        if name not in self.nodes:
            raise KeyError(f"node not in the model: {name}")
        return self.nodes[name]

    def weight_source(self, node: onnx.NodeProto) -> str:
        """The float initializer input 1 of ``node`` reads, directly or through a weight DQ."""
        name = node.input[1] if len(node.input) > 1 else ""
        source = self.sources.get(name, name)
        if source not in self.inits:
            raise ValueError(
                f"{node.name}: its weight input ({name or 'none'}) is not an initializer; "
                "only a Conv/Gemm/MatMul with a constant weight can be quantized"
            )
        return source

    def weight(self, node: onnx.NodeProto) -> np.ndarray:
        """The float weight of a Conv/Gemm/MatMul (also once its input reads a DequantizeLinear)."""
        return numpy_helper.to_array(self.inits[self.weight_source(node)])

    def quantize_weight(
        self, node: onnx.NodeProto, fmt: QuantFormat, record: QuantizedWeight | None = None
    ) -> np.ndarray:
        """Feed input 1 through codes -> a DequantizeLinear of its own; return the weight scale.

        ``record`` carries a quantizer's codes, scales, zero points and corrected bias (GPTQ, MSE,
        bias correction); without one the weight is rounded to nearest here.

        One weight can have several readers. A Torch layer called several times (RT-DETR's
        query_pos_head) is one planned node and unplanned others: those read the planned node's
        DQ, as Torch quantizes every call. Distinct layers with equal weights (copies, zero-init
        heads) share one initializer after export but are planned one by one: each gets its own
        DQ (runtimes fuse a DQ only into its sole reader, and each counts as one layer), reading
        one set of codes when their quantization agrees. A node kept float keeps the float weight.
        """
        source = self.weight_source(node)
        inits, dq = weight_dq(node, numpy_helper.to_array(self.inits[source]), fmt, record)
        scale = numpy_helper.to_array(next(i for i in inits if i.name == dq.input[1]))
        key = (source, _codes_digest(inits, dq))
        if key in self.codes:  # the same codes already stored for another reader
            dq.input[:] = self.codes[key]
        else:
            self.codes[key] = list(dq.input)
            self.new_inits += inits
        self.new_nodes.append(dq)
        self.sources[dq.output[0]] = source
        if record is not None and record.bias is not None:
            self._replace_bias(node, record.bias.detach().cpu().numpy().astype(np.float32))
        node.input[:] = [dq.output[0] if self.sources.get(n, n) == source else n for n in node.input]
        # readers still on the float weight (other calls of this layer) read the first DQ; a planned
        # reader moves to its own DQ when its turn comes, whichever comes first
        for reader in self.readers[source]:
            if reader.name not in self.keep_float:
                reader.input[:] = [dq.output[0] if n == source else n for n in reader.input]
        self.dropped.add(source)  # build() keeps it while a float reader remains
        return scale

    def _replace_bias(self, node: onnx.NodeProto, bias: np.ndarray) -> None:
        """Put a corrected bias where the node's bias lives: its third input (Conv, Gemm), or the
        initializer of the Add that follows a MatMul (an exported Linear)."""
        init = numpy_helper.from_array(bias, f"{node.name}/bias_corrected")
        if node.op_type == "MatMul":
            add = next((r for r in self.readers[node.output[0]] if r.op_type == "Add"), None)
            if add is None:
                raise ValueError(f"{node.name}: a corrected bias needs the Add of its Linear layer")
            index = next((i for i, name in enumerate(add.input) if name in self.inits), None)
            if index is None:
                raise ValueError(f"{node.name}: the Add after it has no bias initializer to correct")
            target, slot = add, index
        elif len(node.input) > 2:
            target, slot = node, 2
        else:
            node.input.append(init.name)
            self.new_inits.append(init)
            self.inits[init.name] = init
            return
        self.dropped.add(target.input[slot])  # a shared bias stays while another node reads it
        target.input[slot] = init.name
        self.new_inits.append(init)
        self.inits[init.name] = init

    def _quantize_tensor(self, tensor: str, quant: TensorQuant) -> str:
        """One shared QuantizeLinear of ``tensor``; return its output name."""
        key = (tensor, quant.dtype)
        if key in self.quantized:
            previous = self.quantized[key][1]
            if previous != quant:
                raise ValueError(f"{tensor} is quantized twice with different parameters")
            return self.quantized[key][0]
        base = _base_name(tensor, quant)
        scale = numpy_helper.from_array(np.array(quant.scale, dtype=np.float32), f"{base}_scale")
        zero = _zero_point_tensor(f"{base}_zero_point", quant)
        self.new_inits += [scale, zero]
        q = helper.make_node(
            "QuantizeLinear", [tensor, scale.name, zero.name], [f"{base}_quantized"], name=f"{base}_Q"
        )
        self.new_nodes.append(q)
        self.quantized[key] = (q.output[0], quant)
        return q.output[0]

    def _dequantize(self, tensor: str, quant: TensorQuant, suffix: str) -> str:
        q_out, _ = self.quantized[(tensor, quant.dtype)]
        base = _base_name(tensor, quant)
        dq = helper.make_node(
            "DequantizeLinear",
            [q_out, f"{base}_scale", f"{base}_zero_point"],
            [f"{base}_dq_{suffix}"],
            name=f"{base}_DQ_{suffix}",
        )
        self.new_nodes.append(dq)
        return dq.output[0]

    def quantize_input(self, node: onnx.NodeProto, quant: TensorQuant, *, index: int = 0) -> None:
        """Feed input ``index`` of ``node`` through the tensor's shared Q and a DQ of its own."""
        tensor = node.input[index]
        self._quantize_tensor(tensor, quant)
        node.input[index] = self._dequantize(tensor, quant, node.name)

    def quantize_output(self, node: onnx.NodeProto, quant: TensorQuant) -> None:
        """Quantize output 0 of ``node``: every reader (and a graph output) reads a dequantized copy.

        The producer then feeds only its QuantizeLinear, which is what lets a runtime fuse
        ``DQ -> op -> Q`` into one integer kernel.
        """
        tensor = node.output[0]
        if tensor in self.outputs:
            raise ValueError(f"{node.name} produces a graph output; outputs stay float")
        self._quantize_tensor(tensor, quant)
        shared = None
        for reader in self.readers[tensor]:
            for i, name in enumerate(reader.input):
                if name != tensor:
                    continue
                if reader.name in self.planned:
                    reader.input[i] = self._dequantize(tensor, quant, reader.name)
                else:
                    shared = shared or self._dequantize(tensor, quant, "float")
                    reader.input[i] = shared

    def quantize_bias(self, node: onnx.NodeProto, *, input_scale: float, weight_scale: np.ndarray) -> None:
        """INT32 bias with scale ``input_scale * weight_scale`` per channel, as integer convs take it."""
        if len(node.input) < 3 or node.input[2] not in self.inits:
            return
        bias_name = node.input[2]
        bias = numpy_helper.to_array(self.inits[bias_name]).astype(np.float64)
        scale = (input_scale * weight_scale.reshape(-1).astype(np.float64)).astype(np.float32)
        codes = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        base = f"{node.name}/bias"
        inits = [
            numpy_helper.from_array(codes, f"{base}_quantized"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int32), f"{base}_zero_point"),
        ]
        self.new_inits += inits
        dq = helper.make_node(
            "DequantizeLinear", [i.name for i in inits], [f"{base}_dequantized"], name=f"{base}_DQ", axis=0
        )
        self.new_nodes.append(dq)
        node.input[2] = dq.output[0]
        # the float bias (or the corrected one quantize_weight wrote) goes unless another node reads it
        self.dropped.add(bias_name)

    def build(self) -> onnx.ModelProto:
        """The edited model, nodes in topological order, replaced initializers no node reads removed."""
        available = {i.name for i in self.graph.input} | set(self.inits) | {i.name for i in self.new_inits}
        nodes = topological_sort([*self.graph.node, *self.new_nodes], available)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        # a replaced weight or bias shared with a node left float (or not replaced) is still read
        unused = self.dropped - _read_names(self.graph) - self.outputs
        kept = [init for init in [*self.graph.initializer, *self.new_inits] if init.name not in unused]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        return self.model


def _codes_digest(inits: list[onnx.TensorProto], dq: onnx.NodeProto) -> str:
    """Digest of a weight DQ's codes, scale, zero point and attributes, whatever their names."""
    digest = hashlib.sha256()
    for init in inits:
        anonymous = onnx.TensorProto()
        anonymous.CopyFrom(init)
        anonymous.name = ""
        digest.update(anonymous.SerializeToString())
    for attr in dq.attribute:
        digest.update(attr.SerializeToString())
    return digest.hexdigest()


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``graph`` reads, subgraphs (If, Loop bodies) included."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in _GRAPH_ATTRS else ():
                names |= _read_names(sub)
    return names


_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
