"""Quantize one layer with the configured method: choose its grid, round, correct its bias.

Methods are judged by what they do to the layer's output on the calibration inputs, not by weight
error (MSE clipping alone can raise a layer's output error): every candidate grid (max-based and,
for ``mse``/``gptq``, MSE-chosen; symmetric and/or asymmetric) is rounded, each output channel keeps
the candidate with the lowest output error ``dW H dW^T``, and GPTQ's rounding replaces plain
rounding on a channel only where it lowers that channel's output error. Without calibration
statistics the weight error stands in for the output error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quantsweep.core.config import Granularity, QuantFormat, WeightMethod, WeightQuantConfig, WeightSymmetry
from quantsweep.quant.bias_correction import corrected_bias
from quantsweep.quant.gptq import LayerStats, gptq, row_errors
from quantsweep.quant.weights import Grid, QuantizedWeight, candidate_grids, decode, encode, fake, merge_grids


def _importance(stats: LayerStats, shape: torch.Size, groups: int) -> torch.Tensor:
    """Mean square of each weight's input column, shaped like the weight (the diagonal of ``H``)."""
    diag = torch.diagonal(stats.hessian, dim1=-2, dim2=-1)  # [G, K]
    per_row = diag.repeat_interleave(shape[0] // groups, dim=0)  # [O, K]
    return per_row.reshape(shape)


def _select(
    weight: torch.Tensor, fmt: QuantFormat, grids: list[Grid], stats: LayerStats | None, groups: int
) -> tuple[Grid, torch.Tensor, torch.Tensor]:
    """The grid with the lowest output error per output channel (per tensor for per-layer scales)."""
    rounded = [fake(weight, grid) for grid in grids]
    errors = torch.stack([row_errors(q - weight, stats, groups) for q in rounded])  # [candidates, O]
    if fmt.granularity is Granularity.PER_LAYER or len(grids) == 1:
        best = int(errors.sum(dim=1).argmin())
        return grids[best], rounded[best], errors[best]
    choice = errors.argmin(dim=0)
    grid = merge_grids(grids, choice)
    return grid, fake(weight, grid), errors.min(dim=0).values


# the rounding a method puts in place of the grid's plain rounding: (weight, grid, stats, groups,
# config) -> rounded weight, kept per output channel only where it lowers that channel's output error
Refinement = Callable[[torch.Tensor, Grid, LayerStats, int, WeightQuantConfig], torch.Tensor]


@dataclass(frozen=True)
class WeightMethodSpec:
    """What a weight method does: search the grid by output error, and refine the rounding."""

    search_grid: bool
    refine: Refinement | None = None

    @property
    def needs_statistics(self) -> bool:
        """Whether it uses the calibration inputs' statistics."""
        return self.search_grid or self.refine is not None


def _gptq(
    weight: torch.Tensor, grid: Grid, stats: LayerStats, groups: int, config: WeightQuantConfig
) -> torch.Tensor:
    return gptq(weight, grid, stats, groups=groups, damp=config.gptq_damp, act_order=config.act_order)


# one entry per method: a new rounding method is one refinement and one entry here
WEIGHT_METHODS: dict[WeightMethod, WeightMethodSpec] = {
    WeightMethod.RTN: WeightMethodSpec(search_grid=False),
    WeightMethod.MSE: WeightMethodSpec(search_grid=True),
    WeightMethod.GPTQ: WeightMethodSpec(search_grid=True, refine=_gptq),
}


def quantize_layer(
    layer: nn.Module,
    fmt: QuantFormat,
    *,
    config: WeightQuantConfig,
    stats: LayerStats | None = None,
) -> QuantizedWeight:
    """``layer``'s weight under ``fmt`` with ``config``'s method (GPTQ and bias correction need ``stats``)."""
    weight = layer.weight.detach().float()
    groups = getattr(layer, "groups", 1)
    importance = None if stats is None else _importance(stats, weight.shape, groups)
    spec = WEIGHT_METHODS[config.method]
    grids = candidate_grids(
        weight, fmt, symmetry=config.symmetry, search=spec.search_grid, importance=importance
    )
    grid, quantized, errors = _select(weight, fmt, grids, stats, groups)
    if spec.refine is not None and stats is not None:
        second = spec.refine(weight, grid, stats, groups, config)
        better = row_errors(second - weight, stats, groups) < errors
        quantized = torch.where(better.reshape(-1, *([1] * (weight.dim() - 1))), second, quantized)
    codes = encode(quantized, grid.scale, grid.zero, fmt.weight)
    bias = None
    if config.bias_correction and stats is not None and getattr(layer, "bias", None) is not None:
        dequantized = decode(codes, grid.scale, grid.zero)
        bias = corrected_bias(weight, dequantized, layer.bias, stats, groups=groups)
    return QuantizedWeight(codes, grid.scale, grid.zero, fmt, bias=bias, method=config.method.value)


def round_to_nearest(weight: torch.Tensor, fmt: QuantFormat) -> QuantizedWeight:
    """The max-based symmetric record (what quantsweep did before methods existed)."""
    grid = candidate_grids(weight, fmt, symmetry=WeightSymmetry.SYMMETRIC, search=False)[0]
    return QuantizedWeight(encode(weight, grid.scale, None, fmt.weight), grid.scale, None, fmt)
