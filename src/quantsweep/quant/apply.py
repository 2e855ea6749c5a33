"""Switch quantizers on and off by layer name, and calibrate activation ranges.

Quantization is applied in place for the duration of a ``with`` block and undone exactly on exit,
so one model serves every layer and every format of a sweep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from quantsweep.config import ActDtype, CalibConfig, CalibMethod, QuantFormat
from quantsweep.quant.numerics import act_scale, fake_quant_act, fake_quant_weight

# torch.quantile refuses inputs above 2**24 elements; larger tensors are strided down to this.
_PERCENTILE_SAMPLE = 1 << 24


@contextlib.contextmanager
def quantized_layers(
    module: nn.Module,
    assignment: Mapping[str, QuantFormat],
    *,
    act_ranges: Mapping[str, float] | None = None,
) -> Iterator[None]:
    """Fake-quantize the named layers (weights and, unless fp16, their inputs) inside the block."""
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    handles = []
    try:
        for name, fmt in assignment.items():
            layer = module.get_submodule(name)
            saved.append((layer.weight, layer.weight.data))
            layer.weight.data = fake_quant_weight(layer.weight.data, fmt)
            if fmt.act is not ActDtype.FP16:
                if act_ranges is None or name not in act_ranges:
                    raise ValueError(f"no calibrated activation range for {name}")
                handles.append(layer.register_forward_pre_hook(_act_hook(act_ranges[name], fmt.act)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for param, original in saved:
            param.data = original


def _act_hook(amax: float, act: ActDtype):
    scale = act_scale(amax, act)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (fake_quant_act(inputs[0], scale=scale, act=act), *inputs[1:])

    return hook


def _abs_percentile(x: torch.Tensor, percentile: float) -> float:
    flat = x.detach().abs().flatten().float()
    if flat.numel() > _PERCENTILE_SAMPLE:
        flat = flat[:: -(-flat.numel() // _PERCENTILE_SAMPLE)]
    return float(torch.quantile(flat, percentile / 100.0))


def calibrate_inputs(
    module: nn.Module,
    layer_names: Sequence[str],
    run_batches: Iterator[None] | None = None,
    *,
    calib: CalibConfig,
) -> dict[str, float]:
    """Input ``amax`` of each named layer over the batches that ``run_batches`` drives through the model.

    ``max`` keeps the largest magnitude seen; ``percentile`` averages the per-batch percentile.
    """
    per_batch: dict[str, list[float]] = {name: [] for name in layer_names}

    def make_hook(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            if calib.method is CalibMethod.MAX:
                per_batch[name].append(float(x.detach().abs().max()))
            else:
                per_batch[name].append(_abs_percentile(x, calib.percentile))

        return hook

    handles = [module.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in layer_names]
    try:
        for _ in run_batches or ():
            pass
    finally:
        for handle in handles:
            handle.remove()
    reduce = max if calib.method is CalibMethod.MAX else (lambda v: sum(v) / len(v))
    return {name: reduce(values) for name, values in per_batch.items() if values}
