"""Switch quantizers on and off by layer name, and calibrate activation ranges.

Quantization is applied in place for the duration of a ``with`` block and undone exactly on exit,
so one model serves every layer and every format of a sweep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from quantsweep.core.config import ActDtype, CalibConfig, QuantFormat
from quantsweep.quant.calibrators import calibrate_ranges
from quantsweep.quant.numerics import ActRange, act_qparams, fake_quant_act, fake_quant_weight
from quantsweep.quant.producer_quant import ProducerQuant, quantized_producers
from quantsweep.quant.weights import QuantizedWeight


@contextlib.contextmanager
def quantized_layers(
    module: nn.Module,
    assignment: Mapping[str, QuantFormat],
    *,
    act_ranges: Mapping[str, float | ActRange] | None = None,
    weights: Mapping[str, QuantizedWeight] | None = None,
    producers: Sequence[ProducerQuant] = (),
) -> Iterator[None]:
    """Fake-quantize the named layers (weights and, unless fp16, their inputs) inside the block.

    A layer with a record in ``weights`` gets exactly that record's weight and bias (what the ONNX
    writer stores); any other layer is rounded to nearest on the symmetric max-based grid.
    ``producers``: module outputs quantized where they are made while a reader is quantized.
    """
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    handles = []
    try:
        for name, fmt in assignment.items():
            layer = module.get_submodule(name)
            record = None if weights is None else weights.get(name)
            saved.append((layer.weight, layer.weight.data))
            if record is None:
                layer.weight.data = fake_quant_weight(layer.weight.data, fmt)
            else:
                _check_record(name, record, fmt)
                layer.weight.data = record.dequantize().to(layer.weight.device, layer.weight.dtype)
                if record.bias is not None:
                    saved.append((layer.bias, layer.bias.data))
                    layer.bias.data = record.bias.to(layer.bias.device, layer.bias.dtype)
            if fmt.act is not ActDtype.FP16:
                if act_ranges is None or name not in act_ranges:
                    raise ValueError(f"no calibrated activation range for {name}")
                handles.append(layer.register_forward_pre_hook(_act_hook(act_ranges[name], fmt.act)))
        with quantized_producers(module, producers, {n: f.act for n, f in assignment.items()}):
            yield
    finally:
        for handle in handles:
            handle.remove()
        for param, original in reversed(saved):
            param.data = original


def _check_record(name: str, record: QuantizedWeight, fmt: QuantFormat) -> None:
    own = (record.fmt.weight, record.fmt.granularity, record.fmt.int4_block_size)
    if own != (fmt.weight, fmt.granularity, fmt.int4_block_size):
        raise ValueError(f"{name}: quantized weights are {record.fmt.name}, the plan asks for {fmt.name}")


def _act_hook(value: float | ActRange, act: ActDtype):
    scale, zero_point = act_qparams(value, act)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (fake_quant_act(inputs[0], scale=scale, act=act, zero_point=zero_point), *inputs[1:])

    return hook


def calibrate_inputs(
    module: nn.Module,
    layer_names: Sequence[str],
    run_batches: Iterator[None] | None = None,
    *,
    calib: CalibConfig,
) -> dict[str, ActRange]:
    """Input range of each named layer over the batches ``run_batches`` drives (see ``calibrators``)."""
    return calibrate_ranges(module, layer_names, run_batches, calib=calib)
