"""Export the BN-folded FP32 model to ONNX and map every quantizable layer to its node by weight content.

Node names are not guessed from module names: a Conv node is the layer whose folded weight is
byte-identical to the node's weight initializer (Gemm/MatMul: the weight or its transpose).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper, version_converter
from torch import nn

from quantsweep.models.network import QUANTIZABLE_TYPES, LayerInfo, StagedNetwork

LOG = logging.getLogger(__name__)
OPSET = 21  # INT4 initializers and blocked DequantizeLinear need opset 21
_EXPORT_OPSET = 18  # what the TorchScript exporter writes; converted to OPSET afterwards
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
INPUT_NAME = "images"
OUTPUT_NAME = "output0"
# metadata key: weighted nodes that are no quantizable Torch layer (e.g. nn.MultiheadAttention's
# projections), kept in float by every scheme and left out of precision counts
UNQUANTIZED_KEY = "quantsweep_unquantized_nodes"


class MappingError(RuntimeError):
    """Quantizable layers that have no ONNX node."""


@dataclass(frozen=True)
class LayerMapping:
    """Torch layer name -> ONNX node name, plus layers the export dropped."""

    nodes: dict[str, str]
    not_exported: tuple[str, ...]
    unquantized_nodes: tuple[str, ...] = ()  # weighted ONNX nodes no quantizable layer owns

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "nodes": self.nodes,
            "not_exported": list(self.not_exported),
            "unquantized_nodes": list(self.unquantized_nodes),
        }


def export_fp32(network: StagedNetwork, *, imgsz: int, path: Path) -> onnx.ModelProto:
    """Write the FP32 model as ONNX (batch 1, static ``imgsz``), at opset 21; return it."""
    head = network.blocks[-1]
    previous = getattr(head, "export", False)
    head.export = True  # the head returns one tensor, as deployed
    sample = torch.zeros(1, 3, imgsz, imgsz, device=next(network.module.parameters()).device)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The dynamo exporter fails on YOLOv10's head; the TorchScript exporter does not.
            torch.onnx.export(
                network.module,
                sample,
                buffer,
                opset_version=_EXPORT_OPSET,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
    finally:
        head.export = previous
    model = version_converter.convert_version(onnx.load_from_string(buffer.getvalue()), OPSET)
    model.ir_version = max(model.ir_version, 10)
    _bypass_weight_identities(model)
    onnx.helper.set_model_props(model, dict(network.metadata))  # output convention, class names
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return model


def _bypass_weight_identities(model: onnx.ModelProto) -> None:
    """Let nodes read initializers directly instead of through Identity nodes.

    The exporter routes the second and later calls of a module (RT-DETR's query_pos_head, once per
    decoder layer) through ``Identity(weight)``; reading the weight directly lets every call be
    quantized with the layer. Graph outputs are left alone.
    """
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _node_weight_digests(model: onnx.ModelProto) -> list[tuple[str, set[str]]]:
    inits = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]])
            digests = {_digest(weight)}
            if weight.ndim == 2:
                digests.add(_digest(weight.T))
            found.append((node.name, digests))
    return found


def map_layers(model: onnx.ModelProto, module: nn.Module, layers: Sequence[LayerInfo]) -> LayerMapping:
    """Map each layer in ``layers`` to its ONNX node; raise MappingError listing any left over."""
    by_digest: dict[str, list[str]] = defaultdict(list)
    for node_name, digests in _node_weight_digests(model):
        for digest in digests:
            by_digest[digest].append(node_name)
    taken: set[str] = set()
    nodes: dict[str, str] = {}
    for layer in sorted(layers, key=lambda item: item.exec_order):
        weight = module.get_submodule(layer.name).weight.detach().cpu().numpy()
        # identical weights in several layers: graph order follows execution order
        candidates = [n for n in by_digest.get(_digest(weight), []) if n not in taken]
        if candidates:
            nodes[layer.name] = candidates[0]
            taken.add(candidates[0])
    missing = [layer.name for layer in layers if layer.name not in nodes]
    if missing:
        raise MappingError(f"{len(missing)} quantizable layers have no ONNX node: {', '.join(missing)}")
    executed = {layer.name for layer in layers}
    not_exported = tuple(
        name
        for name, m in module.named_modules()
        if isinstance(m, QUANTIZABLE_TYPES) and name not in executed
    )
    return LayerMapping(
        nodes=nodes, not_exported=not_exported, unquantized_nodes=_unowned_nodes(model, set(nodes.values()))
    )


def _unowned_nodes(model: onnx.ModelProto, mapped: set[str]) -> tuple[str, ...]:
    """Weighted nodes outside ``mapped`` that do not share a mapped node's weight initializer (a
    layer called several times, such as RT-DETR's query_pos_head, owns every node reading its weight).
    """
    inits = {i.name for i in model.graph.initializer}
    weighted = [
        n for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits
    ]
    owned = {n.input[1] for n in weighted if n.name in mapped}
    return tuple(n.name for n in weighted if n.name not in mapped and n.input[1] not in owned)


def record_unquantized(model: onnx.ModelProto, mapping: LayerMapping, *, path: Path) -> None:
    """Write the mapping's unquantized nodes into the FP32 model's metadata (and file), if any."""
    if mapping.unquantized_nodes:
        onnx.helper.set_model_props(
            model,
            {
                **{p.key: p.value for p in model.metadata_props},
                UNQUANTIZED_KEY: json.dumps(list(mapping.unquantized_nodes)),
            },
        )
        onnx.save(model, path)
