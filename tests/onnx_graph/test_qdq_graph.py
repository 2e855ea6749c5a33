"""QdqEditor and apply_placement on weights and biases that several nodes read.

ONNX export shares one initializer between nodes whose weights are equal: a layer called several
times (RT-DETR's query_pos_head) and distinct layers that are copies or zero-initialised (RT-DETR's
decoder layers and box heads at random init). Quantizing one reader rewires the others, so a later
reader finds a DequantizeLinear output where its weight was, in whichever order the nodes come.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.evaluation.artifact_checks import relative_l2
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.export import WEIGHTED_OPS, export_fp32
from quantsweep.onnx_graph.ort_sessions import ort_session
from quantsweep.onnx_graph.placement import Placement, apply_placement
from quantsweep.onnx_graph.qdq_graph import QdqEditor
from quantsweep.quant.numerics import quantize_weight_codes
from quantsweep.quant.weights import QuantizedWeight
from quantsweep.schemes.scheme_records import Precision
from tests.conftest import CPU_W8A8, tiny_model

INT8 = QuantFormat(WeightDtype.INT8, ActDtype.FP16, Granularity.PER_CHANNEL)
INT4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)
ORT_LIKE = Placement(asymmetric=True, output_q=True, int32_bias=True)
CHANNELS = 8


def _two_readers(op: str, order: tuple[str, str] = ("first", "second")) -> onnx.ModelProto:
    """Nodes ``first`` and ``second``, listed in ``order``, both read input ``x`` and weight ``w``
    (and, for Conv, bias ``b``); an Add sums their outputs."""
    rng = np.random.default_rng(0)
    shape = [CHANNELS, CHANNELS, 1, 1] if op == "Conv" else [CHANNELS, CHANNELS]
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) / 3, "w")]
    extra = []
    if op == "Conv":
        inits.append(numpy_helper.from_array(rng.normal(size=CHANNELS).astype(np.float32), "b"))
        extra = ["b"]
    readers = [helper.make_node(op, ["x", "w", *extra], [f"{name}_out"], name=name) for name in order]
    dims = [1, CHANNELS, 2, 2] if op == "Conv" else [1, CHANNELS]
    graph = helper.make_graph(
        [*readers, helper.make_node("Add", ["first_out", "second_out"], ["z"], name="sum")],
        "two_readers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, dims)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model, full_check=True)
    return ort_session(model.SerializeToString()).run(None, {"x": x})[0]


def _image(op: str) -> np.ndarray:
    shape = (1, CHANNELS, 2, 2) if op == "Conv" else (1, CHANNELS)
    return np.random.default_rng(1).normal(size=shape).astype(np.float32)


def _weight_inputs(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: n.input[1] for n in model.graph.node if n.name in ("first", "second")}


def _initializers(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


@pytest.mark.parametrize("op", ["MatMul", "Conv"])
@pytest.mark.parametrize("order", [("first", "second"), ("second", "first")])
def test_a_shared_weight_is_quantized_once_for_its_readers_in_either_order(op, order) -> None:
    fp32 = _two_readers(op, order)
    editor = QdqEditor(fp32)
    for name in order:
        editor.quantize_weight(editor.node(name), INT8)
    model = editor.build()
    reads = _weight_inputs(model)
    producers = {n.output[0]: n for n in model.graph.node}
    # one DQ per reader (runtimes fuse a DQ only into its sole reader), one set of codes for both
    assert reads["first"] != reads["second"]
    assert {tuple(producers[w].input) for w in reads.values()} == {tuple(producers[reads[order[0]]].input)}
    assert "w" not in _initializers(model)
    x = _image(op)
    error = relative_l2(_run(model, x), _run(fp32, x))
    assert 0 < error < 0.05


def test_readers_planned_at_different_formats_each_get_their_own_codes() -> None:
    editor = QdqEditor(_two_readers("MatMul"))
    editor.quantize_weight(editor.node("first"), INT4)
    editor.quantize_weight(editor.node("second"), INT8)
    model = editor.build()
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["first/weight_quantized"] == TensorProto.INT4
    assert types["second/weight_quantized"] == TensorProto.INT8
    _run(model, _image("MatMul"))


def test_each_reader_gets_its_record_and_corrected_bias() -> None:
    fp32 = _two_readers("Conv")
    weight = torch.from_numpy(numpy_helper.to_array(fp32.graph.initializer[0]).copy())
    records = {}
    for shift, name in enumerate(("first", "second")):
        codes, scale = quantize_weight_codes(weight, INT8)
        records[name] = QuantizedWeight(codes, scale, None, INT8, bias=torch.full((CHANNELS,), shift + 1.0))
    editor = QdqEditor(fp32)
    for name in ("first", "second"):
        editor.quantize_weight(editor.node(name), INT8, records[name])
    model = editor.build()
    biases = {n.name: n.input[2] for n in model.graph.node if n.op_type == "Conv"}
    assert biases == {"first": "first/bias_corrected", "second": "second/bias_corrected"}
    assert "b" not in _initializers(model)  # both readers of the shared float bias replaced it
    _run(model, _image("Conv"))


def test_a_reader_the_plan_keeps_float_keeps_the_float_weight() -> None:
    fp32 = _two_readers("MatMul")
    plan = {"first": Precision(WeightDtype.INT8), "second": Precision(None)}
    model = apply_placement(fp32, plan, ranges=lambda tensors: {}, placement=Placement())
    reads = _weight_inputs(model)
    assert reads["second"] == "w" and reads["first"] != "w" and "w" in _initializers(model)
    _run(model, _image("MatMul"))


def test_a_reader_outside_the_plan_reads_the_planned_nodes_weight() -> None:
    # another call of the planned layer (query_pos_head): Torch quantizes every call
    plan = {"first": Precision(WeightDtype.INT8)}
    model = apply_placement(_two_readers("MatMul"), plan, ranges=lambda t: {}, placement=Placement())
    reads = _weight_inputs(model)
    assert reads["first"] == reads["second"] == "first/weight_dequantized"
    assert "w" not in _initializers(model)


@pytest.mark.parametrize("order", [("first", "second"), ("second", "first")])
def test_integer_placement_of_a_shared_weight_and_bias(order) -> None:
    fp32 = _two_readers("Conv", order)  # apply_placement walks the graph's order
    plan = dict.fromkeys(order, CPU_W8A8)  # run by ONNX Runtime on this CPU: its exact weight type
    images = torch.from_numpy(np.random.default_rng(2).normal(size=(4, CHANNELS, 2, 2)).astype(np.float32))
    model = apply_placement(fp32, plan, ranges=RangeCache(fp32, images), placement=ORT_LIKE)
    assert not {"w", "b"} & _initializers(model)  # both readers read INT32 bias codes
    x = images[:1].numpy()
    assert relative_l2(_run(model, x), _run(fp32, x)) < 0.1


def test_a_weight_that_is_not_an_initializer_is_refused_naming_the_node() -> None:
    fp32 = _two_readers("MatMul")
    fp32.graph.node.append(helper.make_node("MatMul", ["first_out", "z"], ["product"], name="attention"))
    editor = QdqEditor(fp32)
    with pytest.raises(ValueError, match=r"attention: its weight input \(z\) is not an initializer"):
        editor.quantize_weight(editor.node("attention"), INT8)


@pytest.fixture(scope="module")
def rtdetr_onnx(tmp_path_factory) -> onnx.ModelProto:
    """The tiny RT-DETR-L at 64 px: query_pos_head calls and decoder-layer copies share weights."""
    path = tmp_path_factory.mktemp("rtdetr") / "fp32.onnx"
    return export_fp32(tiny_model("rtdetr-l.yaml").network, imgsz=64, path=path)


@pytest.mark.parametrize(
    ("precision", "placement"),
    [(Precision(WeightDtype.INT4), Placement()), (Precision(WeightDtype.INT8, ActDtype.INT8), ORT_LIKE)],
)
def test_rtdetr_with_every_weighted_node_planned_runs(rtdetr_onnx, precision, placement) -> None:
    fp32 = rtdetr_onnx
    inits = {i.name for i in fp32.graph.initializer}
    weighted = [n for n in fp32.graph.node if n.op_type in WEIGHTED_OPS and n.input[1] in inits]
    assert len({n.input[1] for n in weighted}) < len(weighted)  # some weights are shared
    images = torch.rand(2, 3, 64, 64)
    plan = dict.fromkeys((n.name for n in weighted), precision)
    model = apply_placement(fp32, plan, ranges=RangeCache(fp32, images), placement=placement)
    producers = {n.output[0]: n.op_type for n in model.graph.node}
    nodes = [n for n in model.graph.node if n.name in plan]
    assert all(producers.get(n.input[1]) == "DequantizeLinear" for n in nodes)
    assert len({n.input[1] for n in nodes}) == len(nodes)  # every planned node has its own DQ
    onnx.checker.check_model(model)
    out = ort_session(model.SerializeToString()).run(None, {"images": images[:1].numpy()})[0]
    assert np.isfinite(out).all()
