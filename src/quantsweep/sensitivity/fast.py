"""Fast sensitivity: every layer's box error estimated from one forward and one backward pass.

First order, the end-to-end change caused by quantizing layer ``l`` alone is ``J_l dy_l``, where
``dy_l`` is the layer's own output error (quantized weights and input, on its cached FP32 input)
and ``J_l`` the Jacobian from that output to the head. The box error the exact sweep ranks by is
``sqrt(sum_a w_a |J_l dy_l|_a^2 / (4 sum_a w_a))`` with ``w_a`` the FP32 confidence of anchor
``a``. For a random probe ``v`` with unit covariance, ``E[(v . M J_l dy_l)^2] = |M J_l dy_l|^2``
(Hutchinson), and ``v . M J_l dy_l = <J_l^T M v, dy_l>``: one backward pass of ``M v`` gives
``J_l^T M v`` for all layers at once. Images do not interact, so each image's product is an
independent sample: one pass gives as many samples per layer as there are images.

Cost: one forward with autograd, one backward (about two forwards), and one run of each layer
on its cached input (about one forward in all): about 4 forward-pass equivalents. The pass is
bound by memory traffic (the autograd graph holds every activation), so it works in chunks of 4
images: measured on the testbed at 320 px, 3.0 forward-pass equivalents against 3.8-4.7 with 8.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from quantsweep.core.config import ActDtype, QuantFormat
from quantsweep.core.errors import InputError
from quantsweep.data.images import Batch
from quantsweep.models.network import LayerInfo, StagedNetwork, cpu_layout, network_dtype
from quantsweep.quant.numerics import ActRange, act_qparams, fake_quant_act, fake_quant_weight
from quantsweep.quant.weights import QuantizedWeight

FAST_CHUNK = 4  # images per autograd pass; see the module docstring
# probe scales tried in turn when a float16 backward pass overflows (products are rescaled)
_HALF_PROBE_SCALES = (1.0, 2.0**-8, 2.0**-16)
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastEstimate:
    """Estimated box error (same units as the exact sweep's) per layer, and what it cost."""

    box_error: dict[str, float]
    seconds: float


def _layer_error(
    module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fmt: QuantFormat, amax, record=None
) -> torch.Tensor:
    """The layer's own output error (float32) when it alone is quantized, on its unquantized input."""
    half = x.dtype != torch.float32
    x = x.float()
    weight, bias = module.weight, module.bias
    saved, saved_bias = weight.data, None if bias is None else bias.data
    try:
        if half:  # rounding to half would swamp the small error: both outputs are computed in float32
            weight.data = saved.float()
            if bias is not None:
                bias.data = saved_bias.float()
            y = module(x)
        if fmt.act is not ActDtype.FP16:
            scale, zero_point = act_qparams(amax, fmt.act)
            x = fake_quant_act(x, scale=scale, act=fmt.act, zero_point=zero_point)
        quantized = fake_quant_weight(saved.float(), fmt) if record is None else record.dequantize()
        weight.data = quantized.to(device=saved.device, dtype=torch.float32)
        if record is not None and record.bias is not None:
            bias.data = record.bias.to(device=saved.device, dtype=torch.float32)
        return module(x) - y
    finally:
        weight.data = saved
        if bias is not None:
            bias.data = saved_bias


def _probe_chunk(
    network: StagedNetwork,
    images: torch.Tensor,
    layers: Sequence[LayerInfo],
    *,
    fmt: QuantFormat,
    act_ranges: Mapping[str, float | ActRange] | None,
    weights: Mapping[str, QuantizedWeight] | None,
    generator: torch.Generator,
    probe_scale: float = 1.0,
) -> tuple[dict[str, torch.Tensor], float]:
    """Per-image squared probe products for every layer, and this chunk's sum of confidences.

    The probe is multiplied by ``probe_scale`` (gradients of a half-precision network can overflow)
    and the products divided back, so the result does not depend on it.
    """
    names = {layer.name for layer in layers}
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def save(_module, inputs, output):
            output.retain_grad()
            captured[name] = (inputs[0].detach(), output)

        return save

    handles = [network.module.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        output, _ = network.run(cpu_layout(images))
    finally:
        for handle in handles:
            handle.remove()
    weight = output.scores.detach().float().max(dim=-1).values  # [N, A] unquantized confidence
    # drawn on the CPU so that the probe, and the estimate, do not depend on the device
    probe = torch.randn(output.boxes.shape, generator=generator, device="cpu").to(output.boxes.device)
    if probe_scale != 1.0:
        probe = probe * probe_scale
    (output.boxes.float() * probe * weight.sqrt()[..., None]).sum().backward()
    squares = []
    with torch.no_grad():
        for name, (x, y) in captured.items():
            if y.grad is None:  # the layer does not reach the boxes (a class-score branch)
                squares.append(torch.zeros(len(images), device=images.device))
                continue
            amax = None if act_ranges is None else act_ranges.get(name)
            record = None if weights is None else weights.get(name)
            dy = _layer_error(network.module.get_submodule(name), x, y.detach(), fmt, amax, record)
            squares.append((y.grad.float() * dy).flatten(1).sum(dim=1).pow(2))
        # one transfer per chunk, not one per layer
        values = torch.stack(squares).cpu() if squares else torch.zeros(0, len(images))
        if probe_scale != 1.0:
            values = values / probe_scale**2
    return dict(zip(captured, values, strict=True)), float(weight.sum())


def _probe_finite(network: StagedNetwork, images: torch.Tensor, layers, *, generator, **kwargs):
    """:func:`_probe_chunk`, with a smaller probe where a half-precision backward overflowed."""
    scales = (1.0,) if images.dtype == torch.float32 else _HALF_PROBE_SCALES
    state = generator.get_state()
    for scale in scales:
        generator.set_state(state)  # the same probe at every scale
        with torch.enable_grad():
            squares, weight = _probe_chunk(
                network, images, layers, generator=generator, probe_scale=scale, **kwargs
            )
        if images.dtype == torch.float32 or all(bool(torch.isfinite(v).all()) for v in squares.values()):
            return squares, weight
        LOG.info("float16 gradients overflowed with probe scale %g; retrying smaller", scale)
    # ranking on inf/NaN errors would be silently wrong
    raise InputError(
        f"the fast estimate's gradients overflow {images.dtype} even with the smallest probe; "
        "use --compute-dtype float32"
    )


def estimate(
    network: StagedNetwork,
    batch: Batch,
    layers: Sequence[LayerInfo],
    *,
    fmt: QuantFormat,
    act_ranges: Mapping[str, float | ActRange] | None = None,
    weights: Mapping[str, QuantizedWeight] | None = None,
    batch_size: int = FAST_CHUNK,
    device: str = "cpu",
    seed: int = 0,
) -> FastEstimate:
    """Estimated box error of every layer in ``layers`` quantized alone to ``fmt``."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)  # on the CPU: see _probe_chunk
    dtype = network_dtype(network)  # the network's own (half with set_compute_dtype)
    totals = {layer.name: 0.0 for layer in layers}
    weight_sum = 0.0
    params = list(network.module.parameters())
    flags = [param.requires_grad for param in params]
    for param in params:
        param.requires_grad_(False)  # gradients are needed for activations only
    try:
        for start in range(0, len(batch.images), batch_size):
            # the input carries the graph: parameters stay frozen, activations get gradients
            chunk = batch.images[start : start + batch_size].to(device=device, dtype=dtype)
            chunk.requires_grad_(True)
            squares, chunk_weight = _probe_finite(
                network, chunk, layers, fmt=fmt, act_ranges=act_ranges, weights=weights, generator=generator
            )
            weight_sum += chunk_weight
            for name, values in squares.items():
                totals[name] += float(values.sum())
    finally:
        for param, flag in zip(params, flags, strict=True):
            param.requires_grad_(flag)
    box_error = {name: math.sqrt(total / (4 * max(weight_sum, 1e-12))) for name, total in totals.items()}
    return FastEstimate(box_error=box_error, seconds=time.perf_counter() - started)
