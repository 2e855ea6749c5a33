"""Codes carried through Split, MaxPool, upsampling and into Concat: same outputs, fewer float ops."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx

from quantsweep.core.config import ActDtype, WeightDtype
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.ort_sessions import SessionOptions, ort_session
from quantsweep.onnx_graph.placement import apply_placement
from quantsweep.onnx_graph.qdq_propagation import carry_codes_through_movers
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets import get_backend

W8A8 = Precision(WeightDtype.INT8, ActDtype.INT8)


def _ort_ops_and_output(model: onnx.ModelProto, image: np.ndarray, tmp_path, name: str):
    path, optimized = tmp_path / f"{name}.onnx", tmp_path / f"{name}.optimized.onnx"
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    output = ort_session(path, SessionOptions(optimized_model_path=optimized)).run(None, {"images": image})[0]
    return Counter(node.op_type for node in onnx.load(str(optimized)).graph.node), output


def test_ort_cpu_placement_runs_concat_and_split_on_codes_with_the_same_outputs(tiny_onnx, tmp_path) -> None:
    backend = get_backend("ort-cpu")
    assert backend.placement.carry_codes
    plan = {node: W8A8 for node in tiny_onnx["nodes"].values()}
    ranges = RangeCache(tiny_onnx["model"], tiny_onnx["images"])
    without = dataclasses.replace(backend.placement, carry_codes=False)
    image = tiny_onnx["images"][:1].numpy()
    shipped = backend.write(tiny_onnx["model"], plan, ranges=ranges)
    ops, output = _ort_ops_and_output(shipped, image, tmp_path, "carried")
    old_ops, old_output = _ort_ops_and_output(
        apply_placement(tiny_onnx["model"], plan, ranges=ranges, placement=without), image, tmp_path, "old"
    )
    # exact: every added Q re-quantizes values already on its grid
    np.testing.assert_array_equal(output, old_output)
    # each C2f Concat (Split halves, bottleneck outputs) and the SPPF Concat become QLinearConcat
    assert ops["QLinearConcat"] >= old_ops["QLinearConcat"] + 8, (ops, old_ops)
    assert ops["Concat"] <= old_ops["Concat"] - 8
    assert ops["DequantizeLinear"] < old_ops["DequantizeLinear"]
    assert ops["QLinearConv"] == old_ops["QLinearConv"] == len(plan)


def test_a_float_concat_input_is_quantized_with_the_parameters_the_concat_output_gets(tiny_onnx) -> None:
    plan = {node: W8A8 for node in tiny_onnx["nodes"].values()}
    ranges = RangeCache(tiny_onnx["model"], tiny_onnx["images"])
    without = dataclasses.replace(get_backend("openvino").placement, carry_codes=False)
    before = apply_placement(tiny_onnx["model"], plan, ranges=ranges, placement=without)
    float_inputs = {
        (node.name, i)
        for node in before.graph.node
        if node.op_type == "Concat"
        for i, name in enumerate(node.input)
        if not any(p.op_type == "DequantizeLinear" and name in p.output for p in before.graph.node)
    }
    model = carry_codes_through_movers(before)
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    checked = 0
    for concat in (n for n in model.graph.node if n.op_type == "Concat"):
        after = readers.get(concat.output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        for i, name in enumerate(concat.input):
            dq = producers[name]
            assert dq.op_type == "DequantizeLinear", (concat.name, name)
            assert len(readers[dq.output[0]]) == 1  # a DQ of its own, so the runtime can fuse it
            if (concat.name, i) in float_inputs:
                assert list(dq.input[1:]) == list(after[0].input[1:])
                checked += 1
    assert checked >= 4
