"""Bias correction: fold the expected output shift that quantization causes back into the bias.

On the calibration inputs the float layer's mean output is ``W mu_f + b`` and the quantized
layer's ``W_q mu_q + b`` (``mu_q``: the mean input columns after the layer's own activation
quantization), so ``b' = b + W mu_f - W_q mu_q`` makes the two means equal. Removing the mean
never raises the output mean-square error on those inputs: it lowers it by the squared shift.
"""

from __future__ import annotations

import torch

from quantsweep.quant.gptq import LayerStats, as_rows


def corrected_bias(
    weight: torch.Tensor, quantized: torch.Tensor, bias: torch.Tensor, stats: LayerStats, *, groups: int
) -> torch.Tensor:
    """The bias that removes the mean output shift of ``quantized`` against ``weight``."""
    w = as_rows(weight.detach().float(), groups)
    wq = as_rows(quantized.float(), groups)
    float_out = (w @ stats.float_mean[:, :, None]).reshape(-1)
    quant_out = (wq @ stats.mean[:, :, None]).reshape(-1)
    return bias.detach().float() + float_out - quant_out  # float32, as the records' scales


def output_shift(
    weight: torch.Tensor, quantized: torch.Tensor, stats: LayerStats, *, groups: int
) -> torch.Tensor:
    """Mean output change per output channel on the calibration inputs (bias unchanged)."""
    w = as_rows(weight.detach().float(), groups)
    wq = as_rows(quantized.float(), groups)
    return (wq @ stats.mean[:, :, None] - w @ stats.float_mean[:, :, None]).reshape(-1)
