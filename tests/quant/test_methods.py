"""Weight methods on real layers of a tiny model: each judged by the layer's output on calibration data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantsweep.core.config import (
    ActDtype,
    Granularity,
    QuantFormat,
    WeightDtype,
    WeightMethod,
    WeightQuantConfig,
    WeightSymmetry,
)
from quantsweep.models.network import enumerate_layers
from quantsweep.quant.bias_correction import output_shift
from quantsweep.quant.gptq import LayerStats, gptq, layer_stats
from quantsweep.quant.layer_quant import quantize_layer, round_to_nearest
from quantsweep.quant.weights import fake, searched_grid
from tests.conftest import TINY_IMGSZ, tiny_model

INT4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)
INT8 = QuantFormat(WeightDtype.INT8, ActDtype.FP16, Granularity.PER_CHANNEL)
SYMMETRIC_NO_BC = {"symmetry": WeightSymmetry.SYMMETRIC, "bias_correction": False}


@pytest.fixture(scope="module")
def captured():
    """A tiny YOLOv8n and the real inputs of three of its convs (dense 3x3, 1x1, grouped) on images."""
    loaded = tiny_model("yolov8n.yaml")
    images = torch.rand(4, 3, TINY_IMGSZ, TINY_IMGSZ)
    layers = enumerate_layers(loaded.network, images[:1])
    module = loaded.network.module
    names = ["model.1.conv", "model.2.cv1.conv", "model.22.cv2.0.0.conv"]
    inputs = {}
    handles = [
        module.get_submodule(n).register_forward_pre_hook(lambda _m, i, n=n: inputs.setdefault(n, i[0]))
        for n in names
    ]
    with torch.no_grad():
        loaded.network.run(images)
    for handle in handles:
        handle.remove()
    return loaded, layers, inputs


def _output_error(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias=None) -> float:
    with torch.no_grad():
        reference = layer(x)
        saved, saved_bias = layer.weight.data, None if layer.bias is None else layer.bias.data
        layer.weight.data = weight
        if bias is not None:
            layer.bias.data = bias
        try:
            return float((layer(x) - reference).pow(2).mean())
        finally:
            layer.weight.data = saved
            if saved_bias is not None:
                layer.bias.data = saved_bias


@pytest.mark.parametrize("name", ["model.1.conv", "model.2.cv1.conv", "model.22.cv2.0.0.conv"])
@pytest.mark.parametrize("fmt", [INT4, INT8], ids=["int4", "int8"])
def test_each_method_lowers_the_layer_output_error(captured, name, fmt) -> None:
    loaded, _layers, inputs = captured
    layer, x = loaded.network.module.get_submodule(name), inputs[name]
    stats = layer_stats(layer, x)
    rtn = _output_error(layer, x, round_to_nearest(layer.weight.data, fmt).dequantize())
    errors = {}
    for method in (WeightMethod.MSE, WeightMethod.GPTQ):
        record = quantize_layer(layer, fmt, config=WeightQuantConfig(method, **SYMMETRIC_NO_BC), stats=stats)
        errors[method] = _output_error(layer, x, record.dequantize())
    assert errors[WeightMethod.MSE] < rtn
    assert errors[WeightMethod.GPTQ] < 0.9 * errors[WeightMethod.MSE]


def test_gptq_with_a_diagonal_hessian_is_round_to_nearest(captured) -> None:
    loaded, _layers, inputs = captured
    layer = loaded.network.module.get_submodule("model.2.cv1.conv")
    full = layer_stats(layer, inputs["model.2.cv1.conv"])
    diagonal = torch.diag_embed(torch.rand(full.hessian.shape[:2]) + 0.5)
    stats = LayerStats(diagonal, full.mean, full.float_mean, full.count)
    grid = searched_grid(layer.weight.data, INT4, symmetric=True, search=False)
    for act_order in (False, True):
        rounded = gptq(layer.weight.data, grid, stats, groups=1, act_order=act_order)
        assert torch.equal(rounded, fake(layer.weight.data, grid))
    # and with the real (non-diagonal) Hessian it is not
    assert not torch.equal(gptq(layer.weight.data, grid, full, groups=1), fake(layer.weight.data, grid))


@pytest.mark.parametrize("method", list(WeightMethod))
def test_bias_correction_removes_the_mean_output_shift(captured, method) -> None:
    loaded, _layers, inputs = captured
    name = "model.2.cv1.conv"
    layer, x = loaded.network.module.get_submodule(name), inputs[name]
    stats = layer_stats(layer, x)
    plain = quantize_layer(layer, INT4, config=WeightQuantConfig(method, bias_correction=False), stats=stats)
    corrected = quantize_layer(
        layer, INT4, config=WeightQuantConfig(method, bias_correction=True), stats=stats
    )
    assert torch.equal(plain.codes, corrected.codes)
    with torch.no_grad():
        reference = layer(x).mean(dim=(0, 2, 3))
        shifts = {}
        for label, record in (("plain", plain), ("corrected", corrected)):
            bias = layer.bias if record.bias is None else record.bias
            out = nn.functional.conv2d(x, record.dequantize(), bias, layer.stride, layer.padding)
            shifts[label] = (out.mean(dim=(0, 2, 3)) - reference).abs().max()
    assert shifts["plain"] > 1e-3
    assert shifts["corrected"] < 1e-5 * max(1.0, float(reference.abs().max()))
    assert float(output_shift(layer.weight, plain.dequantize(), stats, groups=1).abs().max()) > 1e-3


def test_asymmetric_int4_represents_the_dfl_integers_exactly() -> None:
    loaded = tiny_model("yolov8n.yaml")
    dfl = loaded.network.module.get_submodule("model.22.dfl.conv")
    assert torch.equal(dfl.weight.flatten(), torch.arange(16.0))
    errors = {}
    for symmetry in WeightSymmetry:
        record = quantize_layer(
            dfl, INT4, config=WeightQuantConfig(WeightMethod.RTN, symmetry, bias_correction=False)
        )
        errors[symmetry] = float((record.dequantize() - dfl.weight).abs().max())
    assert errors[WeightSymmetry.SYMMETRIC] > 0.5  # 8 non-negative levels for 16 integers
    assert errors[WeightSymmetry.ASYMMETRIC] == 0.0
    assert errors[WeightSymmetry.AUTO] == 0.0


def test_mse_int8_finds_the_exact_scale_for_integer_weights() -> None:
    weight = torch.arange(16.0).reshape(1, 16, 1, 1)
    max_based = fake(weight, searched_grid(weight, INT8, symmetric=True, search=False))
    searched = searched_grid(weight, INT8, symmetric=True, search=True)
    assert (max_based - weight).abs().max() > 0.01  # scale 15/127 misses the integers
    assert torch.equal(fake(weight, searched), weight)  # scale 1/8 (15 on code 120) hits them
