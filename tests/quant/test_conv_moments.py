"""A conv's input second moments by spatial offset equal the im2col ones (GPTQ's Hessian)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantsweep.quant import conv_moments
from quantsweep.quant.gptq import _columns, layer_stats

CASES = [  # kernel, padding, input height x width, channels, groups
    ((3, 3), (1, 1), (7, 9), 6, 1),  # the C2f bottleneck conv
    ((3, 3), (1, 1), (7, 9), 6, 2),  # grouped
    ((3, 3), (0, 0), (6, 6), 4, 1),  # no padding: no border left out
    ((5, 5), (2, 2), (8, 7), 3, 1),
    ((3, 1), (1, 0), (5, 5), 2, 1),  # not square
    ((3, 3), (2, 2), (4, 4), 3, 1),  # padding wider than the kernel needs
    ((2, 2), (0, 1), (5, 6), 3, 1),
    ((3, 3), (1, 1), (2, 2), 3, 1),  # every row and column is a border
]


@pytest.mark.parametrize(("kernel", "padding", "size", "channels", "groups"), CASES)
def test_moments_by_offset_equal_the_im2col_ones(kernel, padding, size, channels, groups) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(channels, 4, kernel, padding=padding, groups=groups)
    x = torch.randn(3, channels, *size)
    x_quant = (x * 4).round() / 4  # quarter steps: every sum is exact in float, so equal is equal
    assert conv_moments.applies(layer)
    hessian, mean, float_mean, count = conv_moments.column_moments(layer, x, x_quant)
    cols, float_cols = _columns(layer, x_quant), _columns(layer, x)
    assert count == cols.shape[1]
    assert torch.equal(hessian, cols.transpose(1, 2) @ cols)
    assert torch.equal(mean, cols.sum(1))
    torch.testing.assert_close(float_mean, float_cols.sum(1))


def test_layer_stats_take_the_offsets_only_where_they_apply() -> None:
    assert not conv_moments.applies(nn.Conv2d(8, 8, 3, stride=2, padding=1))
    assert not conv_moments.applies(nn.Conv2d(8, 8, 3, padding=1, groups=8))  # depthwise
    assert not conv_moments.applies(nn.Conv2d(8, 8, 1))
    assert not conv_moments.applies(nn.Conv2d(8, 8, 3, padding=1, dilation=2))
    layer = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(5, 8, 10, 10)
    stats = layer_stats(layer, x)  # the offsets, one chunk; im2col takes two images at a time
    cols = _columns(layer, x)
    torch.testing.assert_close(stats.hessian, cols.transpose(1, 2) @ cols / cols.shape[1])
    assert stats.count == 5 * 100
