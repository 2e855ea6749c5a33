from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from quantsweep.core.config import ActDtype, CalibConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.evaluation.artifact_checks import relative_l2, run_onnx, torch_export_output
from quantsweep.models.network import enumerate_layers
from quantsweep.onnx_graph.export import export_fp32, map_layers
from quantsweep.onnx_graph.inspect import average_weight_bits, node_precisions, precision_counts
from quantsweep.quant.apply import calibrate_inputs
from tests.conftest import TINY_IMGSZ, NodePlan, qdq_artifact, tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    loaded = tiny_model("yolov8n.yaml")
    images = torch.rand(3, 3, TINY_IMGSZ, TINY_IMGSZ)
    layers = enumerate_layers(loaded.network, images[:1])
    model = export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=tmp_path_factory.mktemp("onnx") / "fp32.onnx")
    mapping = map_layers(model, loaded.network.module, layers)

    def drive():
        with torch.no_grad():
            loaded.network.run(images)
            yield None

    amax = calibrate_inputs(
        loaded.network.module, [layer.name for layer in layers], drive(), calib=CalibConfig()
    )
    return loaded, images, layers, model, mapping, amax


def _fmt(weight, act, granularity=Granularity.PER_CHANNEL, block=None):
    return QuantFormat(weight, act, granularity, block)


@pytest.mark.parametrize(
    ("fmt", "tolerance"),
    [
        (_fmt(WeightDtype.INT4, ActDtype.FP16), 1e-5),
        (_fmt(WeightDtype.INT8, ActDtype.FP16, Granularity.PER_LAYER), 1e-5),
        (_fmt(WeightDtype.FP8, ActDtype.FP16), 1e-5),
        (_fmt(WeightDtype.INT4, ActDtype.FP16, block=8), 1e-5),
        # quantized activations: float differences upstream flip a few roundings
        (_fmt(WeightDtype.INT8, ActDtype.INT8), 3e-2),
        (_fmt(WeightDtype.FP8, ActDtype.FP8), 3e-2),
    ],
)
def test_onnx_artifact_equals_torch_fake_quant(exported, tmp_path, fmt, tolerance) -> None:
    loaded, images, layers, model, mapping, amax = exported
    plans = {mapping.nodes[layer.name]: NodePlan(fmt, amax[layer.name]) for layer in layers}
    path = tmp_path / "q.onnx"
    onnx.save(qdq_artifact(model, plans), path)
    onnx.checker.check_model(str(path))
    label = f"{fmt.weight.value}-{fmt.act.value}"
    assert precision_counts(onnx.load(path)) == {label: len(layers)}
    output, _ = run_onnx(path, images)
    reference = torch_export_output(
        loaded.network,
        images,
        assignment=dict.fromkeys((layer.name for layer in layers), fmt),
        act_ranges=amax,
    )
    fp32 = torch_export_output(loaded.network, images, assignment={}, act_ranges=None)
    assert relative_l2(output, reference) < tolerance
    # the artifact is far closer to the fake-quant model than quantization moves that model
    assert relative_l2(output, reference) < relative_l2(reference, fp32)


def test_int4_initializers_are_stored_as_int4(exported) -> None:
    _, _, layers, model, mapping, _amax = exported
    fmt = _fmt(WeightDtype.INT4, ActDtype.FP16)
    q = qdq_artifact(model, {mapping.nodes[layer.name]: NodePlan(fmt) for layer in layers})
    types = {init.data_type for init in q.graph.initializer if init.name.endswith("weight_quantized")}
    assert types == {onnx.TensorProto.INT4}
    assert average_weight_bits(q) == pytest.approx(4.0)
    assert q.ByteSize() < model.ByteSize() / 5


def test_excluded_conv_sharing_an_input_gets_no_qdq(exported, tmp_path) -> None:
    _loaded, images, _layers, model, mapping, amax = exported
    # The head's box and class branches of one level read the same feature map.
    box, cls = mapping.nodes["model.22.cv2.0.0.conv"], mapping.nodes["model.22.cv3.0.0.conv"]
    nodes = {n.name: n for n in model.graph.node}
    shared = nodes[box].input[0]
    assert nodes[cls].input[0] == shared
    fmt = _fmt(WeightDtype.INT8, ActDtype.INT8)
    q = qdq_artifact(model, {box: NodePlan(fmt, amax["model.22.cv2.0.0.conv"])})
    q_nodes = {n.name: n for n in q.graph.node}
    assert q_nodes[cls].input[0] == shared  # the excluded conv still reads the float tensor
    assert q_nodes[box].input[0] != shared
    producers = {out: n for n in q.graph.node for out in n.output}
    assert producers[q_nodes[box].input[0]].op_type == "DequantizeLinear"
    precisions = node_precisions(q)
    assert precisions[cls] == ("float", "fp16") and precisions[box] == ("int8", "int8")
    path = tmp_path / "one.onnx"
    onnx.save(q, path)
    output, _ = run_onnx(path, images)
    assert np.isfinite(output).all()


def test_unknown_node_and_missing_range_are_refused(exported) -> None:
    _, _, layers, model, mapping, _ = exported
    with pytest.raises(KeyError, match="not in the model"):
        qdq_artifact(model, {"no/such/node": NodePlan(_fmt(WeightDtype.INT8, ActDtype.FP16))})
    with pytest.raises(ValueError, match="calibrated range"):
        qdq_artifact(model, {mapping.nodes[layers[0].name]: NodePlan(_fmt(WeightDtype.INT8, ActDtype.INT8))})


def test_fp8_scheme_with_exclusions_runs_in_onnx_runtime(exported, tmp_path) -> None:
    loaded, images, layers, model, mapping, amax = exported
    fmt = _fmt(WeightDtype.FP8, ActDtype.FP8)
    kept = {layer.name for layer in layers[:2]} | {layers[-1].name}  # first convs and the DFL stay float
    plans = {mapping.nodes[x.name]: NodePlan(fmt, amax[x.name]) for x in layers if x.name not in kept}
    path = tmp_path / "fp8.onnx"
    onnx.save(qdq_artifact(model, plans), path)
    onnx.checker.check_model(str(path))
    assert precision_counts(onnx.load(path)) == {"float": 3, "fp8-fp8": len(layers) - 3}
    output, providers = run_onnx(path, images)
    reference = torch_export_output(
        loaded.network,
        images,
        assignment={x.name: fmt for x in layers if x.name not in kept},
        act_ranges=amax,
    )
    assert providers == ["CPUExecutionProvider"] and relative_l2(output, reference) < 3e-2
