"""The backend seam: registry, plan checks, node kinds, each CPU target's placement as its runtime runs it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from quantsweep.core.config import ActDtype, WeightDtype
from quantsweep.core.errors import InputError
from quantsweep.evaluation.artifact_checks import relative_l2
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.export import export_fp32
from quantsweep.onnx_graph.inspect import precision_counts
from quantsweep.onnx_graph.ort_sessions import SessionOptions, ort_session
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets import backend_names, get_backend, parse_targets
from quantsweep.targets.base import ConvKind, conv_kinds
from tests.conftest import CPU_INT8, CPU_W8A8, tiny_model

W8A8 = CPU_W8A8  # run by the CPU runtimes here: the weight type they execute exactly
FLOAT = Precision(None)


def _plan(tiny_onnx, *, kept: int) -> dict[str, Precision]:
    nodes = list(tiny_onnx["nodes"].values())
    return {node: FLOAT if i < kept else W8A8 for i, node in enumerate(nodes)}


def _write(tiny_onnx, target: str, plan, tmp_path):
    backend = get_backend(target)
    model = backend.write(
        tiny_onnx["model"], plan, ranges=RangeCache(tiny_onnx["model"], tiny_onnx["images"])
    )
    path = tmp_path / f"{target}.onnx"
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return backend, path


def test_registry_names_and_errors() -> None:
    assert {"ort-cpu", "openvino", "size"} <= set(backend_names())
    assert parse_targets("size, ort-cpu,size") == ("size", "ort-cpu")
    with pytest.raises(InputError, match=r"unknown target 'tensorrtx'; valid: .*ort-cpu"):
        get_backend("tensorrtx")


def test_a_plan_the_target_cannot_run_is_refused_in_one_line(tiny_onnx) -> None:
    kinds = conv_kinds(tiny_onnx["model"])
    node = next(iter(tiny_onnx["nodes"].values()))
    with pytest.raises(InputError, match="target ort-cpu cannot run fp8-fp8"):
        get_backend("ort-cpu").check_plan({node: Precision(WeightDtype.FP8, ActDtype.FP8)}, kinds)
    with pytest.raises(InputError, match=f"target size cannot run {W8A8.label}"):
        get_backend("size").check_plan({node: W8A8}, kinds)
    get_backend("openvino").check_plan({node: W8A8, "other": FLOAT}, kinds)


def test_conv_kinds_find_first_depthwise_and_regular(tmp_path) -> None:
    loaded = tiny_model("yolov10n.yaml")
    model = export_fp32(loaded.network, imgsz=64, path=tmp_path / "v10.onnx")
    kinds = Counter(conv_kinds(model).values())
    assert kinds[ConvKind.FIRST] == 1 and kinds[ConvKind.DEPTHWISE] > 0 and kinds[ConvKind.REGULAR] > 50


def test_ort_cpu_fuses_every_planned_conv_into_qlinearconv(tiny_onnx, tmp_path) -> None:
    plan = _plan(tiny_onnx, kept=3)
    backend, path = _write(tiny_onnx, "ort-cpu", plan, tmp_path)
    planned = sum(p.weight is not None for p in plan.values())
    assert precision_counts(onnx.load(str(path))) == {"float": 3, f"{CPU_INT8}-uint8": planned}
    optimized = tmp_path / "optimized.onnx"
    ort_session(path, SessionOptions(optimized_model_path=optimized))
    ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    assert ops["QLinearConv"] == planned
    assert ops["Conv"] + ops.get("FusedConv", 0) == 3
    # the SiLUs after quantized convs run as integer ops too, not in float between DQ and Q
    assert ops["QLinearSigmoid"] == ops["QLinearMul"] > 40 and ops["Sigmoid"] + ops["Mul"] < 12
    image = tiny_onnx["images"][:1].numpy()
    fp32 = ort_session(tiny_onnx["path"]).run(None, {"images": image})[0]
    assert relative_l2(backend.load(path)(image), fp32) < 0.1


def test_inputs_only_placement_is_not_fused_by_onnx_runtime(tiny_onnx, tmp_path) -> None:
    # why ort-cpu needs its own placement: Q/DQ on inputs and weights alone leave float convs
    _, path = _write(tiny_onnx, "openvino", _plan(tiny_onnx, kept=0), tmp_path)
    optimized = tmp_path / "optimized.onnx"
    ort_session(path, SessionOptions(optimized_model_path=optimized))
    assert not any(n.op_type == "QLinearConv" for n in onnx.load(str(optimized)).graph.node)


def test_openvino_runs_every_planned_conv_in_int8(tiny_onnx, tmp_path) -> None:
    plan = _plan(tiny_onnx, kept=2)
    backend, path = _write(tiny_onnx, "openvino", plan, tmp_path)
    assert backend.availability().available
    runner = backend.load(backend.save(onnx.load(str(path)), path))  # the IR, as deployed
    executed = Counter(runner.executed_precisions().values())
    # UINT8 activations with a zero point: YOLOv10s k0 0.7568 against 0.7431 signed, same speed
    assert executed["u8"] == sum(p.weight is not None for p in plan.values()), executed
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    activation_types = {inits[n.input[2]].data_type for n in quantizers}
    assert activation_types == {onnx.TensorProto.UINT8}
    producers = {out: node for node in model.graph.node for out in node.output}
    kept = [n for n in model.graph.node if plan.get(n.name) == FLOAT]
    assert kept and all(producers.get(n.input[0], n).op_type != "DequantizeLinear" for n in kept)
    image = tiny_onnx["images"][:1].numpy()
    fp32 = ort_session(tiny_onnx["path"]).run(None, {"images": image})[0]
    assert relative_l2(runner(image), fp32) < 0.1


def test_size_target_writes_int4_weights_that_onnx_runtime_folds(tiny_onnx, tmp_path) -> None:
    plan = {node: Precision(WeightDtype.INT4) for node in tiny_onnx["nodes"].values()}
    backend, path = _write(tiny_onnx, "size", plan, tmp_path)
    assert precision_counts(onnx.load(str(path))) == {"int4-fp16": len(plan)}
    assert path.stat().st_size < 0.2 * tiny_onnx["path"].stat().st_size
    image = tiny_onnx["images"][:1].numpy()
    plain = ort_session(path).run(None, {"images": image})[0]
    np.testing.assert_allclose(backend.load(path)(image), plain, rtol=1e-4, atol=1e-4)


def test_a_node_kind_a_target_runs_in_no_low_precision_stays_float() -> None:
    kinds = {"conv": ConvKind.REGULAR, "linear": ConvKind.LINEAR}
    plan = {"conv": W8A8, "linear": W8A8}
    # ONNX Runtime runs no INT8 Linear fast (RT-DETR's decoder): written float, and the plan then fits
    ort = get_backend("ort-cpu")
    adapted = ort.adapt_plan(plan, kinds)
    assert adapted == {"conv": W8A8, "linear": FLOAT}
    ort.check_plan(adapted, kinds)
    with pytest.raises(InputError, match=f"cannot run {W8A8.label} on linear node linear"):
        ort.check_plan(plan, kinds)
    # OpenVINO runs INT8 Linear layers: nothing moves
    assert get_backend("openvino").adapt_plan(plan, kinds) == plan


def test_a_target_that_cannot_write_here_is_refused_by_name_else_left_out(monkeypatch, caplog) -> None:
    from quantsweep.stages.materialize_stage import match_targets  # noqa: PLC0415
    from quantsweep.targets.base import Availability  # noqa: PLC0415
    from quantsweep.targets.litert_cpu import LiteRtBackend  # noqa: PLC0415

    monkeypatch.setattr(LiteRtBackend, "writable", lambda self: Availability(False, "no litert-torch"))
    with pytest.raises(InputError, match="target litert cannot write its artifacts here: no litert-torch"):
        match_targets([], ("litert",), {})
    # without --target every registered target that can write here is tried, and litert is not
    with caplog.at_level("INFO"), pytest.raises(InputError, match="no deployment target can run"):
        match_targets([], (), {})
    assert "target litert left out: no litert-torch" in caplog.text
