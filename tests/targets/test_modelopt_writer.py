"""ModelOpt as the second writer of ``tensorrt`` artifacts: its plan handling, and (where ModelOpt is
installed, in its own environment; CI has none) its INT8 and FP8 files against the plan."""

from __future__ import annotations

import importlib.util

import onnx
import pytest

from quantsweep.core.config import ActDtype, WeightDtype
from quantsweep.core.errors import InputError
from quantsweep.evaluation.artifact_checks import relative_l2
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.inspect import node_precisions, precision_counts
from quantsweep.onnx_graph.ort_sessions import ort_session
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets import get_backend
from quantsweep.targets.base import ConvKind
from quantsweep.targets.modelopt_writer import plan_deviations, quantize_mode, write_modelopt

INT8 = Precision(WeightDtype.INT8, ActDtype.INT8)
FP8 = Precision(WeightDtype.FP8, ActDtype.FP8)
FLOAT = Precision(None)
HAS_MODELOPT = all(importlib.util.find_spec(m) for m in ("modelopt", "onnx_graphsurgeon"))
needs_modelopt = pytest.mark.skipif(not HAS_MODELOPT, reason="ModelOpt is not installed (own environment)")


def _plan(source, low: Precision, *, kept: int) -> dict[str, Precision]:
    regular = [n for n, k in source["kinds"].items() if k is ConvKind.REGULAR]
    plan = dict.fromkeys(source["kinds"], low) | dict.fromkeys(regular[:kept], FLOAT)
    return get_backend("tensorrt").adapt_plan(plan, source["kinds"])


def _channels(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name: tuple(inits[n.input[1]].dims[:2]) for n in model.graph.node if n.op_type == "Conv"}


def test_quantize_mode_follows_the_plan() -> None:
    assert quantize_mode({"a": INT8, "b": FLOAT}) == "int8"
    assert quantize_mode({"a": FP8, "b": FP8, "c": INT8}) == "fp8"
    with pytest.raises(InputError, match="not int4-fp16"):
        quantize_mode({"a": Precision(WeightDtype.INT4)})


def test_plan_deviations_name_each_node_written_otherwise(tiny_v10_onnx, tmp_path) -> None:
    plan = _plan(tiny_v10_onnx, INT8, kept=2)
    model = get_backend("tensorrt").write(
        tiny_v10_onnx["model"], plan, ranges=RangeCache(tiny_v10_onnx["model"], tiny_v10_onnx["images"])
    )
    assert plan_deviations(model, plan) == {}
    node = next(iter(plan))
    assert plan_deviations(model, plan | {node: FP8}) == {node: ["fp8-fp8", plan[node].label]}


@needs_modelopt
def test_modelopt_int8_has_exactly_the_planned_precisions(tiny_v10_onnx, tmp_path) -> None:
    plan = _plan(tiny_v10_onnx, INT8, kept=3)
    path = tmp_path / "modelopt_int8.onnx"
    write_modelopt(tiny_v10_onnx["path"], path, plan=plan, images=tiny_v10_onnx["images"])
    model = onnx.load(str(path))
    assert plan_deviations(model, plan) == {}
    assert precision_counts(model) == {"float": 3, "int8-int8": len(plan) - 3}
    image = tiny_v10_onnx["images"][:1].numpy()
    fp32 = ort_session(tiny_v10_onnx["path"]).run(None, {"images": image})[0]
    assert relative_l2(ort_session(path).run(None, {"images": image})[0], fp32) < 0.1


@needs_modelopt
def test_modelopt_fp8_departs_from_the_plan_only_where_it_excludes_convs(tiny_v10_onnx, tmp_path) -> None:
    plan = _plan(tiny_v10_onnx, FP8, kept=3)
    path = tmp_path / "modelopt_fp8.onnx"
    write_modelopt(tiny_v10_onnx["path"], path, plan=plan, images=tiny_v10_onnx["images"])
    model = onnx.load(str(path))
    found, channels = node_precisions(model), _channels(tiny_v10_onnx["model"])
    kept = [n for n, p in plan.items() if p.weight is None]
    assert all(found[n] == ("float", "fp16") for n in kept)
    deviations = plan_deviations(model, plan)
    # one mode per call: the plan's INT8 (first, depthwise) nodes stay float; ModelOpt also leaves
    # convs with 16 or fewer channels float in FP8 (too small to gain)
    for node, (planned, written) in deviations.items():
        small = min(channels[node]) <= 16
        assert written.startswith("float") and (planned == "int8-int8" or small), (node, planned, written)
    fp8 = [n for n, p in plan.items() if p == FP8 and min(channels[n]) > 16]
    assert fp8 and all(found[n] == ("fp8", "fp8") for n in fp8)
    image = tiny_v10_onnx["images"][:1].numpy()
    fp32 = ort_session(tiny_v10_onnx["path"]).run(None, {"images": image})[0]
    assert relative_l2(ort_session(path).run(None, {"images": image})[0], fp32) < 0.1
