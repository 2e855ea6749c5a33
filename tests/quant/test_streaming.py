"""Calibration passes in chunks give the records one pass over every image gives."""

from __future__ import annotations

import pytest
import torch

from quantsweep.core.config import (
    ActDtype,
    Granularity,
    QuantFormat,
    WeightDtype,
    WeightMethod,
    WeightQuantConfig,
)
from quantsweep.quant import scheme, streaming
from quantsweep.quant.layer_quant import quantize_layer
from quantsweep.quant.scheme import quantize_each_alone, quantize_scheme
from tests.conftest import TINY_IMGSZ, calibrated_tiny_model

W8A8 = QuantFormat(WeightDtype.INT8, ActDtype.UINT8, Granularity.PER_CHANNEL)


@pytest.fixture(scope="module")
def setup(tiny_data):
    network, batch, layers, ranges = calibrated_tiny_model(tiny_data)
    assert len(batch.images) >= 4
    return network, batch.images, [layer.name for layer in layers], ranges


def _agree(one: dict, chunked: dict) -> float:
    same = sum(int((one[n].codes == chunked[n].codes).sum()) for n in one)
    return same / sum(one[n].codes.numel() for n in one)


@pytest.mark.parametrize("per_chunk", [1, 3])
def test_sequential_records_do_not_depend_on_chunking(setup, monkeypatch, per_chunk) -> None:
    """Round to nearest with bias correction (statistics-driven, not chaotic): the same codes and
    biases; GPTQ reacts to last-bit differences of its sums, so its codes agree almost everywhere."""
    network, images, layers, ranges = setup
    assignment = dict.fromkeys(layers, W8A8)
    for method, agreement in ((WeightMethod.RTN, 1.0), (WeightMethod.GPTQ, 0.95)):
        config = WeightQuantConfig(method=method, bias_correction=True)
        monkeypatch.setattr(streaming, "CHUNK_PIXELS", streaming.CHUNK_PIXELS)
        one = quantize_scheme(network, assignment, images, config=config, act_ranges=ranges)
        monkeypatch.setattr(streaming, "CHUNK_PIXELS", per_chunk * TINY_IMGSZ * TINY_IMGSZ)
        assert len(streaming.chunks_of(images)) > 1
        chunked = quantize_scheme(network, assignment, images, config=config, act_ranges=ranges)
        monkeypatch.undo()
        assert set(chunked) == set(one)
        assert _agree(one, chunked) >= agreement, method
        if method is WeightMethod.RTN:
            for name in one:
                torch.testing.assert_close(one[name].bias, chunked[name].bias, rtol=1e-3, atol=1e-3)


def test_each_layer_sees_the_same_inputs_chunked(setup, monkeypatch) -> None:
    """The statistics each layer is quantized from (its quantized input, upstream quantized)."""
    network, images, layers, ranges = setup
    assignment = dict.fromkeys(layers, W8A8)
    config = WeightQuantConfig(method=WeightMethod.RTN, bias_correction=True)
    seen: list[dict[str, torch.Tensor]] = []

    def recording(layer, fmt, *, config, stats=None):
        seen[-1][next(n for n, m in network.module.named_modules() if m is layer)] = stats.hessian
        return quantize_layer(layer, fmt, config=config, stats=stats)

    monkeypatch.setattr(scheme, "quantize_layer", recording)
    for per_chunk in (None, 2):
        seen.append({})
        if per_chunk:
            monkeypatch.setattr(streaming, "CHUNK_PIXELS", per_chunk * TINY_IMGSZ * TINY_IMGSZ)
        quantize_scheme(network, assignment, images, config=config, act_ranges=ranges)
    assert seen[0].keys() == seen[1].keys() == set(layers)
    # convolutions of 2 images and of all differ in the last bits, and a last bit can move an
    # activation across a rounding step: the differences grow along the network; over the first
    # six layers they stay below 1e-4 (without the upstream layers' input quantization: >= 3e-4)
    worst = max(float((seen[0][n] - seen[1][n]).abs().max() / seen[0][n].abs().max()) for n in layers[:6])
    assert worst < 1e-4, worst


def test_each_alone_records_do_not_depend_on_chunking(setup, monkeypatch) -> None:
    network, images, layers, ranges = setup
    config = WeightQuantConfig(method=WeightMethod.RTN, bias_correction=True)
    one = quantize_each_alone(network, layers, images, formats=[W8A8], config=config, act_ranges=ranges)
    monkeypatch.setattr(streaming, "CHUNK_PIXELS", 2 * TINY_IMGSZ * TINY_IMGSZ)
    chunked = quantize_each_alone(network, layers, images, formats=[W8A8], config=config, act_ranges=ranges)
    assert _agree(one[W8A8.name], chunked[W8A8.name]) == 1.0
