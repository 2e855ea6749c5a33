"""Artifacts carry exactly the records Torch simulates: GPTQ/MSE codes, zero points, corrected biases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from quantsweep.core.config import (
    ActDtype,
    CalibConfig,
    CalibMethod,
    Granularity,
    QuantFormat,
    WeightDtype,
    WeightMethod,
    WeightQuantConfig,
)
from quantsweep.evaluation.artifact_checks import relative_l2, run_onnx, torch_export_output
from quantsweep.models.network import enumerate_layers
from quantsweep.onnx_graph.export import export_fp32, map_layers
from quantsweep.onnx_graph.inspect import precision_counts
from quantsweep.quant.apply import calibrate_inputs
from quantsweep.quant.scheme import quantize_scheme
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

    names = [layer.name for layer in layers]
    ranges = calibrate_inputs(loaded.network.module, names, drive(), calib=CalibConfig(CalibMethod.MSE))
    return loaded, images, layers, model, mapping, ranges


def _artifact(exported, tmp_path, fmt, config):
    loaded, images, layers, model, mapping, ranges = exported
    assignment = {layer.name: fmt for layer in layers}
    records = quantize_scheme(loaded.network, assignment, images, config=config, act_ranges=ranges)
    plans = {mapping.nodes[n]: NodePlan(fmt, act_range=ranges[n]) for n in assignment}
    path = tmp_path / "q.onnx"
    onnx.save(qdq_artifact(model, plans, {mapping.nodes[n]: r for n, r in records.items()}), path)
    onnx.checker.check_model(str(path))
    output, _ = run_onnx(path, images)
    reference = torch_export_output(
        loaded.network, images, assignment=assignment, act_ranges=ranges, weights=records
    )
    rounded = torch_export_output(loaded.network, images, assignment=assignment, act_ranges=ranges)
    return path, records, output, reference, rounded


@pytest.mark.parametrize("method", [WeightMethod.MSE, WeightMethod.GPTQ])
@pytest.mark.parametrize(
    "fmt",
    [
        QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL),
        QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL, 8),
        QuantFormat(WeightDtype.INT8, ActDtype.FP16, Granularity.PER_LAYER),
        QuantFormat(WeightDtype.FP8, ActDtype.FP16, Granularity.PER_CHANNEL),
    ],
    ids=lambda f: f.name,
)
def test_weight_only_artifact_equals_torch_with_the_method(exported, tmp_path, fmt, method) -> None:
    _path, records, output, reference, rounded = _artifact(exported, tmp_path, fmt, WeightQuantConfig(method))
    assert relative_l2(output, reference) < 1e-5
    # the records are not round to nearest: the comparison would catch a writer that re-rounds
    assert relative_l2(reference, rounded) > 1e2 * relative_l2(output, reference)
    assert any(r.bias is not None for r in records.values())


def test_asymmetric_int4_is_stored_unsigned_with_zero_points(exported, tmp_path) -> None:
    _loaded, _images, layers, _model, mapping, _ranges = exported
    fmt = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)
    path, records, output, reference, _ = _artifact(exported, tmp_path, fmt, WeightQuantConfig())
    assert relative_l2(output, reference) < 1e-5
    dfl = records["model.22.dfl.conv"]
    assert dfl.unsigned and torch.equal(dfl.dequantize().flatten(), torch.arange(16.0))
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    node = mapping.nodes["model.22.dfl.conv"]
    assert inits[f"{node}/weight_quantized"].data_type == onnx.TensorProto.UINT4
    assert inits[f"{node}/weight_zero_point"].data_type == onnx.TensorProto.UINT4
    assert precision_counts(model) == {"int4-fp16": len(layers)}


@pytest.mark.parametrize("act", [ActDtype.INT8, ActDtype.UINT8])
def test_w8a8_artifact_with_signed_or_unsigned_activations(exported, tmp_path, act) -> None:
    layers = exported[2]
    fmt = QuantFormat(WeightDtype.INT8, act, Granularity.PER_CHANNEL)
    path, _records, output, reference, _ = _artifact(exported, tmp_path, fmt, WeightQuantConfig())
    assert np.isfinite(output).all() and relative_l2(output, reference) < 3e-2
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    input_zeros = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zero_types = {i.data_type for i in input_zeros}
    assert zero_types == {onnx.TensorProto.UINT8 if act is ActDtype.UINT8 else onnx.TensorProto.INT8}
    assert precision_counts(model) == {f"int8-{act.value}": len(layers)}
    if act is ActDtype.UINT8:
        zeros = [int(onnx.numpy_helper.to_array(i)) for i in input_zeros]
        assert any(z > 0 for z in zeros)  # SiLU outputs: a small zero point, not 128
