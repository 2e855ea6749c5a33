"""The ``tensorrt`` target on CPU: its artifacts checked from the file, its plan rules, its availability.

Engines cannot be built here (no GPU); what TensorRT's explicit quantization asks of the ONNX is
checked structurally: signed zero-point-0 Q/DQ on the inputs and weights of the planned convs only,
weights per output channel, no FP8 on first/grouped/depthwise convs, kept layers untouched.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from quantsweep.core.config import ActDtype, WeightDtype
from quantsweep.core.errors import InputError
from quantsweep.core.records import JsonLines
from quantsweep.evaluation.artifact_checks import relative_l2
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.inspect import node_precisions, precision_counts
from quantsweep.onnx_graph.ort_sessions import ort_session
from quantsweep.onnx_graph.qdq_propagation import VALUE_MOVERS
from quantsweep.schemes.scheme_records import LayerAssignment, Policy, Precision, Scheme
from quantsweep.stages.kept_sets import KeptSetMeasure
from quantsweep.stages.materialize_stage import match_targets
from quantsweep.targets import get_backend
from quantsweep.targets import tensorrt_gpu as trt_module
from quantsweep.targets.base import ConvKind

INT8 = Precision(WeightDtype.INT8, ActDtype.INT8)
FP8 = Precision(WeightDtype.FP8, ActDtype.FP8)
FLOAT = Precision(None)


def _write(source, plan, tmp_path, name="trt.onnx"):
    model = get_backend("tensorrt").write(
        source["model"], plan, ranges=RangeCache(source["model"], source["images"])
    )
    path = tmp_path / name
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return onnx.load(str(path))


def _qdq_facts(model: onnx.ModelProto):
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return inits, readers, qdq


def _assert_trt_placement(model: onnx.ModelProto, plan) -> None:
    """Signed, zero point 0, per-channel weights; Q/DQ read by planned nodes at inputs 0 and 1, and
    by the value-moving ops and Concats the codes are carried through (exact), so no Q feeds a
    float reader (no output Q in ONNX Runtime's sense)."""
    inits, readers, qdq = _qdq_facts(model)
    planned = {n for n, p in plan.items() if p.weight is not None}
    producers = {out: n for n in model.graph.node for out in n.output}
    carriers = VALUE_MOVERS | {"Concat"}
    for node in qdq:
        zero = inits[node.input[2]]
        assert zero.data_type in (TensorProto.INT8, TensorProto.FLOAT8E4M3FN), node.name
        assert not np.any(numpy_helper.to_array(zero).astype(np.float32)), node.name
        if node.op_type == "DequantizeLinear":
            for reader, index in readers[node.output[0]]:
                assert (reader.name in planned and index in (0, 1)) or reader.op_type in carriers, (
                    node.name,
                    reader.name,
                )
    nodes = {n.name: n for n in model.graph.node}
    for name in planned:
        input_dq = producers[nodes[name].input[0]]
        assert input_dq.op_type == "DequantizeLinear", name
        weight_dq = producers[nodes[name].input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and weight_dq.input[0] in inits
        scale = numpy_helper.to_array(inits[weight_dq.input[1]])
        assert scale.shape == (inits[weight_dq.input[0]].dims[0],)  # one scale per output channel
    for name in set(plan) - planned:
        assert all(producers.get(i, nodes[name]).op_type != "DequantizeLinear" for i in nodes[name].input)


def test_int8_artifact_is_in_tensorrt_placement(tiny_onnx, tmp_path) -> None:
    nodes = list(tiny_onnx["nodes"].values())
    plan = {node: FLOAT if i < 3 else INT8 for i, node in enumerate(nodes)}
    model = _write(tiny_onnx, plan, tmp_path)
    _assert_trt_placement(model, plan)
    assert precision_counts(model) == {"float": 3, "int8-int8": len(nodes) - 3}
    image = tiny_onnx["images"][:1].numpy()
    fp32 = ort_session(tiny_onnx["path"]).run(None, {"images": image})[0]
    written = ort_session(tmp_path / "trt.onnx").run(None, {"images": image})[0]
    assert relative_l2(written, fp32) < 0.1


def test_fp8_plan_keeps_first_and_depthwise_convs_at_int8(tiny_v10_onnx, tmp_path) -> None:
    backend, kinds = get_backend("tensorrt"), tiny_v10_onnx["kinds"]
    regular = [n for n, k in kinds.items() if k is ConvKind.REGULAR]
    plan = {node: FP8 for node in kinds} | {regular[0]: FLOAT}
    with pytest.raises(InputError, match=r"target tensorrt cannot run fp8-fp8 on (first|depthwise) node"):
        backend.check_plan(plan, kinds)
    adapted = backend.adapt_plan(plan, kinds)
    backend.check_plan(adapted, kinds)
    model = _write(tiny_v10_onnx, adapted, tmp_path)
    _assert_trt_placement(model, adapted)
    found = node_precisions(model)
    for node, kind in kinds.items():
        if kind is not ConvKind.REGULAR:
            assert found[node] == ("int8", "int8"), (node, kind)
    assert found[regular[0]] == ("float", "fp16")
    by_kind = Counter(kind for kind in kinds.values())
    assert precision_counts(model) == {
        "float": 1,
        "fp8-fp8": by_kind[ConvKind.REGULAR] - 1,
        "int8-int8": by_kind[ConvKind.FIRST] + by_kind[ConvKind.DEPTHWISE],
    }
    image = tiny_v10_onnx["images"][:1].numpy()
    fp32 = ort_session(tiny_v10_onnx["path"]).run(None, {"images": image})[0]
    assert relative_l2(ort_session(tmp_path / "trt.onnx").run(None, {"images": image})[0], fp32) < 0.1


def test_adapt_plan_is_the_identity_elsewhere_and_for_int8(tiny_v10_onnx) -> None:
    plan = dict.fromkeys(tiny_v10_onnx["kinds"], FP8)
    assert get_backend("ort-cpu").adapt_plan(plan, tiny_v10_onnx["kinds"]) == plan
    int8 = dict.fromkeys(tiny_v10_onnx["kinds"], INT8)
    assert get_backend("tensorrt").adapt_plan(int8, tiny_v10_onnx["kinds"]) == int8
    assert get_backend("tensorrt").runs() == {"int8-int8", "int7-int8", "fp8-fp8"}


def test_materialize_matches_an_fp8_scheme_to_tensorrt_only(tiny_v10_onnx) -> None:
    nodes = tiny_v10_onnx["kinds"]
    layers = tuple(LayerAssignment(f"layer{i}", node, FP8, None, None, 1) for i, node in enumerate(nodes))
    scheme = Scheme("k0", Policy.TOP_K, (), layers)
    fp8_set = SimpleNamespace(schemes=(scheme,), combination="fp8-fp8/per_channel", low=FP8)
    matched = match_targets([fp8_set], (), tiny_v10_onnx["kinds"])
    assert set(matched) == {"tensorrt"}
    with pytest.raises(InputError, match="target openvino runs int7-int8, int8-int8 only"):
        match_targets([fp8_set], ("openvino",), tiny_v10_onnx["kinds"])


def test_availability_says_why_not(monkeypatch) -> None:
    backend = get_backend("tensorrt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend.availability() == trt_module.Availability(False, trt_module.NO_GPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trt_module.importlib.util, "find_spec", lambda name: None)
    assert backend.availability() == trt_module.Availability(False, trt_module.NO_PACKAGE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_not_available_on_this_machine() -> None:
    available = get_backend("tensorrt").availability()
    assert not available.available and "no CUDA GPU" in available.reason


def test_search_trials_are_written_as_the_target_adapts_them(tiny_v10_onnx, tmp_path) -> None:
    # a search trial of an FP8 scheme keeps first and depthwise convs at INT8, as materialize does
    kinds = tiny_v10_onnx["kinds"]
    ranking = [LayerAssignment(f"layer{i}", node, FP8, None, i, 1) for i, node in enumerate(kinds)]
    scheme_set = SimpleNamespace(ranking=ranking, high=FLOAT, low=FP8)
    ranges = RangeCache(tiny_v10_onnx["model"], tiny_v10_onnx["images"])
    log = JsonLines(tmp_path / "evaluations.jsonl")
    measure = KeptSetMeasure(get_backend("tensorrt"), scheme_set, ranges, None, log, records={}, source=None)
    counts = precision_counts(measure.model(()))
    depthwise = sum(kind in (ConvKind.DEPTHWISE, ConvKind.FIRST, ConvKind.GROUPED) for kind in kinds.values())
    assert depthwise > 0 and counts.get("int8-int8") == depthwise
    assert counts["fp8-fp8"] == len(kinds) - depthwise
