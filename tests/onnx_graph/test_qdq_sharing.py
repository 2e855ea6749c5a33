"""Each activation quantized once where it is produced: the same values, OpenVINO's fused form."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import pytest

from quantsweep.core.config import ActDtype, WeightDtype
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.ort_sessions import ort_session
from quantsweep.onnx_graph.output_map import producer_quants
from quantsweep.onnx_graph.placement import apply_placement, input_ranges
from quantsweep.onnx_graph.qdq_sharing import share_quantizers
from quantsweep.onnx_graph.scale_groups import shared_ranges
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets import get_backend

W8A8 = Precision(WeightDtype.INT8, ActDtype.INT8)


def _written(tiny_onnx, *, share: bool) -> onnx.ModelProto:
    model = tiny_onnx["model"]
    nodes = list(tiny_onnx["nodes"].values())
    reads = {node.name: node.input[0] for node in model.graph.node if node.input}
    found = RangeCache(model, tiny_onnx["images"])({reads[n] for n in nodes})
    shared = shared_ranges(model, {n: found[reads[n]] for n in nodes}, {n: n for n in nodes})
    producers = (
        producer_quants(
            model,
            tiny_onnx["loaded"].network,
            nodes=tiny_onnx["nodes"],
            ranges=shared_by_layer(tiny_onnx, shared),
            image=tiny_onnx["images"],
        )
        if share
        else []
    )
    preset = input_ranges(model, shared) | {p.tensor: p.range for p in producers}
    ranges = RangeCache(model, tiny_onnx["images"], preset=preset)
    placement = dataclasses.replace(get_backend("openvino").placement, share_quantizers=share)
    plan = dict.fromkeys(nodes, W8A8)
    return apply_placement(model, plan, ranges=ranges, placement=placement, producers=producers)


def shared_by_layer(tiny_onnx, shared):
    """The shared ranges keyed by Torch layer name."""
    return {layer: shared[node] for layer, node in tiny_onnx["nodes"].items()}


def _quantize_counts(model: onnx.ModelProto) -> Counter:
    inits = {i.name for i in model.graph.initializer}
    return Counter(
        n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    )


def test_sharing_keeps_every_value_and_quantizes_each_tensor_once(tiny_onnx, tmp_path) -> None:
    assert get_backend("openvino").placement.share_quantizers
    before = _written(tiny_onnx, share=False)
    after = share_quantizers(onnx.ModelProto.FromString(before.SerializeToString()))
    shipped = _written(tiny_onnx, share=True)
    onnx.checker.check_model(after)
    image = {"images": tiny_onnx["images"][:1].numpy()}
    outputs = []
    for name, model in (("before", before), ("after", after)):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        outputs.append(ort_session(tmp_path / f"{name}.onnx").run(None, image)[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-5)
    old, new = _quantize_counts(before), _quantize_counts(after)
    assert max(old.values()) > 1 and max(new.values()) == 1  # one Q per tensor
    assert sum(new.values()) < sum(old.values()) - 10
    # the C2f's Split halves are no longer quantized one by one: the conv output before them is
    # (in the head's C2fs, whose halves only convs read, by sharing alone; in the backbone's, whose
    # residual Adds read a half too, because the simulation quantizes that output where it is made)
    for model, c2fs in ((after, range(12, 22)), (shipped, range(22))):
        made_by = {out: node for node in model.graph.node for out in node.output}
        splits = [n for n in model.graph.node if n.op_type in ("Split", "Slice") and _block(n) in c2fs]
        assert splits and all(made_by[n.input[0]].op_type == "DequantizeLinear" for n in splits), [
            n.name for n in splits if made_by[n.input[0]].op_type != "DequantizeLinear"
        ]


def _block(node: onnx.NodeProto) -> int:
    return int(node.name.split("/")[1].split(".")[1]) if node.name.startswith("/model.") else -1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openvino_fuses_the_shared_quantizers_into_the_convs(tiny_onnx, tmp_path) -> None:
    ov = pytest.importorskip("openvino")
    image = tiny_onnx["images"][:1].numpy()
    results = {}
    for share in (False, True):
        path = tmp_path / f"share_{share}.onnx"
        onnx.save(_written(tiny_onnx, share=share), str(path))
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        layers = [
            (op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["outputPrecisions"].astype(str))
            for op in compiled.get_runtime_model().get_ordered_ops()
        ]
        codes_out = sum(kind == "Convolution" and prec == "u8" for kind, prec in layers)
        standalone = sum(kind in ("FakeQuantize", "Subgraph") for kind, _ in layers)
        results[share] = (codes_out, standalone, compiled({0: image})[0])
    # convs write UINT8 codes instead of floats that a separate FakeQuantize then quantizes
    assert results[True][0] > results[False][0] + 4, results
    assert results[True][1] < results[False][1], results
    np.testing.assert_allclose(
        results[True][2], results[False][2], rtol=0, atol=0.05 * np.abs(results[False][2]).max()
    )
