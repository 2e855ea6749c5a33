"""Which Torch module's output an ONNX tensor is, checked by value.

The export names each node after the module that made it (``/model.2/m.0/Add`` inside
``model.2.m.0``), so the candidates for a tensor are the modules on that path; the deepest whose
output equals the tensor on an image is the one. Modules shared between parents (Ultralytics'
default SiLU is one module object for every conv) and tensors made inside a module's forward
(PSA's first residual Add) have none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import torch

from quantsweep.models.network import StagedNetwork
from quantsweep.onnx_graph.ort_sessions import ort_session, with_outputs
from quantsweep.onnx_graph.scale_groups import producer_tensors
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.producer_quant import ProducerQuant


def _candidates(node_name: str, modules: set[str]) -> list[str]:
    """Module paths along an exported node's name, deepest first."""
    parts = [p for p in node_name.strip("/").split("/")[:-1] if p]
    paths = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return [p for p in reversed(paths) if p in modules]


def _onnx_values(model: onnx.ModelProto, tensors: list[str], image: np.ndarray) -> dict[str, np.ndarray]:
    session = ort_session(with_outputs(model, tensors).SerializeToString())
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: image})
    wanted = set(tensors)
    return {n: v for n, v in zip(names, values, strict=True) if n in wanted}


def module_outputs(
    model: onnx.ModelProto, network: StagedNetwork, tensors: Iterable[str], image: torch.Tensor
) -> dict[str, str]:
    """``{tensor: module name}`` for the tensors of ``model`` (FP32, exported from ``network``) that
    are the output of one unshared module, compared on ``image`` (one, NCHW)."""
    module = network.module
    producer = {out: node.name for node in model.graph.node for out in node.output}
    tensors = [t for t in tensors if t in producer]
    counts = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    unshared = {name for name, m in module.named_modules() if counts[id(m)] == 1}
    wanted = {t: _candidates(producer[t], unshared) for t in tensors}
    names = {c for found in wanted.values() for c in found}
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(_m, _i, output, name=name):
            if isinstance(output, torch.Tensor):
                captured[name] = output.detach().float().cpu()

        handles.append(module.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            network.run(image)
    finally:
        for handle in handles:
            handle.remove()
    values = _onnx_values(model, tensors, image.numpy())
    found = {}
    for tensor, candidates in wanted.items():
        expected = values[tensor]
        scale = float(np.abs(expected).max()) or 1.0
        for name in candidates:
            out = captured.get(name)
            same_shape = out is not None and tuple(out.shape) == expected.shape
            if same_shape and float(np.abs(out.numpy() - expected).max()) <= 1e-3 * scale:
                found[tensor] = name
                break
    return found


def producer_quants(
    fp32: onnx.ModelProto,
    network: StagedNetwork,
    *,
    nodes: Mapping[str, str],
    ranges: Mapping[str, ActRange],
    image: torch.Tensor,
) -> list[ProducerQuant]:
    """The tensors to quantize where they are produced (``scale_groups.producer_tensors``) that are
    one Torch module's output, each with its readers' shared range (``ranges``: layer -> range,
    already shared per group); a tensor no module outputs keeps its readers' quantizers."""
    wanted = producer_tensors(fp32, {n: nodes[n] for n in ranges if n in nodes})
    modules = module_outputs(fp32, network, wanted, image[:1])
    found = []
    for tensor, layers in wanted.items():
        if tensor in modules:
            readers = tuple(layers)
            found.append(
                ProducerQuant(
                    modules[tensor], tensor, ranges[readers[0]], readers, tuple(nodes[n] for n in readers)
                )
            )
    return found
