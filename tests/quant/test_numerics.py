from __future__ import annotations

import pytest
import torch

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.quant.numerics import fake_quant_act, fake_quant_weight, weight_scale


def fmt(weight: WeightDtype, granularity: Granularity = Granularity.PER_CHANNEL, block: int | None = None):
    return QuantFormat(weight=weight, act=ActDtype.FP16, granularity=granularity, int4_block_size=block)


@pytest.mark.parametrize(("dtype", "levels"), [(WeightDtype.INT8, 127), (WeightDtype.INT4, 7)])
def test_integer_weights_land_on_their_grid(dtype: WeightDtype, levels: int) -> None:
    w = torch.randn(16, 8, 3, 3)
    q = fake_quant_weight(w, fmt(dtype))
    scale = weight_scale(w, fmt(dtype))
    codes = q / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.abs().max() <= levels + 1e-4
    # the largest magnitude of each channel is represented exactly
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)), rtol=1e-6)


def test_int4_error_exceeds_int8_error() -> None:
    w = torch.randn(32, 16, 3, 3)
    err8 = (fake_quant_weight(w, fmt(WeightDtype.INT8)) - w).pow(2).mean()
    err4 = (fake_quant_weight(w, fmt(WeightDtype.INT4)) - w).pow(2).mean()
    assert err4 > 50 * err8


def test_per_channel_beats_per_layer_on_unequal_channels() -> None:
    w = torch.randn(8, 4, 1, 1) * torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1)
    per_layer = (fake_quant_weight(w, fmt(WeightDtype.INT4, Granularity.PER_LAYER)) - w).pow(2).sum()
    per_channel = (fake_quant_weight(w, fmt(WeightDtype.INT4)) - w).pow(2).sum()
    assert per_channel < per_layer
    assert weight_scale(w, fmt(WeightDtype.INT4, Granularity.PER_LAYER)).numel() == 1
    assert weight_scale(w, fmt(WeightDtype.INT4)).shape == (8, 1, 1, 1)


def test_int4_blocks_have_one_scale_per_block_of_input_channels() -> None:
    w = torch.randn(4, 64, 1, 1)
    w[:, 40] = 50.0  # an outlier only inflates its own block
    blocked = fake_quant_weight(w, fmt(WeightDtype.INT4, block=32))
    scale = weight_scale(w, fmt(WeightDtype.INT4, block=32))
    assert torch.equal(scale[:, :32], scale[:, :1].expand(-1, 32, -1, -1))
    assert (scale[:, 32:] > scale[:, :32]).all()
    plain = fake_quant_weight(w, fmt(WeightDtype.INT4))
    assert (blocked[:, :32] - w[:, :32]).abs().mean() < (plain[:, :32] - w[:, :32]).abs().mean()


def test_fp8_is_e4m3_representable_and_keeps_relative_precision() -> None:
    w = torch.randn(8, 8, 3, 3)
    q = fake_quant_weight(w, fmt(WeightDtype.FP8))
    scale = weight_scale(w, fmt(WeightDtype.FP8))
    scaled = q / scale
    assert torch.allclose(scaled.to(torch.float8_e4m3fn).float(), scaled, atol=1e-3)
    big = w.abs() > 0.1
    assert ((q - w).abs()[big] / w.abs()[big]).max() < 0.07  # 3 mantissa bits


def test_activation_quantization() -> None:
    x = torch.linspace(-3, 3, 1001)
    assert torch.equal(fake_quant_act(x, scale=1.0, act=ActDtype.FP16), x)
    q8 = fake_quant_act(x, scale=3 / 127, act=ActDtype.INT8)
    assert len(torch.unique(q8)) <= 255 and (q8 - x).abs().max() <= 3 / 127 / 2 + 1e-6
    clipped = fake_quant_act(torch.tensor([10.0]), scale=3 / 127, act=ActDtype.INT8)
    assert clipped.item() == pytest.approx(3.0, rel=1e-5)
    qf8 = fake_quant_act(x, scale=3 / 448, act=ActDtype.FP8)
    assert ((qf8 - x).abs() <= x.abs() * 2**-4 + 1e-6).all()  # 3 mantissa bits: relative error


def test_impossible_combinations_carry_a_reason() -> None:
    assert QuantFormat(WeightDtype.FP8, ActDtype.INT8, Granularity.PER_LAYER).unsupported_reason()
    assert QuantFormat(
        WeightDtype.INT8, ActDtype.FP8, Granularity.PER_LAYER, int4_block_size=32
    ).unsupported_reason()
    assert QuantFormat(WeightDtype.INT4, ActDtype.INT8, Granularity.PER_CHANNEL).unsupported_reason() is None
