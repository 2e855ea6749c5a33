"""Label-free output distillation: tune the quantized layers' biases and weight scales together.

After the sequential pass (GPTQ, bias correction) each layer has been fitted to its own output;
what is left is the error the layers add up to at the head. This fine-tune runs the whole model
with every layer of the records quantized (weights from the records, inputs fake-quantized with
the calibrated ranges and a straight-through gradient) and moves two things per output channel,
both of which the artifacts already carry: the bias (float, or INT32 codes in the integer
placements) and the weight scale (a multiplicative factor ``exp(t)``; the integer codes stay
exactly as GPTQ chose them). The loss is the head's output against the FP32 model's on the
calibration images: box corners in pixels weighted by the FP32 confidence at each anchor, plus
class probabilities, as the sweep's ranking measures them (metrics/output_errors.py). No labels.

Cost: ``steps`` forward and backward passes of ``batch`` images (YOLOv10s, 320 px, 2 cores: about
60 s for 200 steps of 4). Memory: one batch's activations for the backward pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from quantsweep.core.config import ActDtype
from quantsweep.models.network import StagedNetwork
from quantsweep.models.outputs import HeadOutput
from quantsweep.quant.numerics import ActRange, act_qparams, fake_quant_act
from quantsweep.quant.producer_quant import ProducerQuant, quantized_producers
from quantsweep.quant.weights import QuantizedWeight, decode

LOG = logging.getLogger(__name__)
CLASS_WEIGHT = 100.0  # a probability error of 0.1 weighs as a box corner 1 px off
LEARNING_RATES = {"bias": 1e-3, "log_scale": 1e-4}
DISTILL_CHECKS = 4  # whole-set loss checks during the tuning (the lowest wins)


class _ScaledWeight(nn.Module):
    """A parametrization: the record's codes times its scale times ``exp(log_scale)``."""

    def __init__(self, record: QuantizedWeight) -> None:
        super().__init__()
        self.codes, self.scale, self.zero = record.codes.float(), record.scale, record.zero_point
        self.log_scale = nn.Parameter(torch.zeros_like(record.scale))

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return decode(self.codes, self.scale * torch.exp(self.log_scale), self.zero)


class TunedBias(nn.Module):
    """A parametrization: the bias is this module's parameter, started from the record's."""

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(start.detach().float().clone())

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return self.bias


def _input_hook(value: float | ActRange, act: ActDtype) -> Callable:
    """Fake-quantize the layer's input; the gradient passes straight through the rounding, and
    not where the value was clipped (moving a clipped value changes nothing downstream)."""
    scale, zero = act_qparams(value, act)
    lo, hi = {ActDtype.UINT8: (0, 255), ActDtype.INT8: (-128, 127)}.get(act, (None, None))

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        quantized = fake_quant_act(x, scale=scale, act=act, zero_point=zero)
        if lo is None:  # FP8: no clipping mask
            return (x + (quantized - x).detach(), *inputs[1:])
        codes = x.detach() / scale + zero
        inside = ((codes > lo) & (codes < hi)).to(x.dtype)
        return (quantized.detach() + (x - x.detach()) * inside, *inputs[1:])

    return hook


def simulated_act(act: ActDtype, *, asymmetric: bool) -> ActDtype:
    """The activation type the artifact writes for a format's ``act``: INT8 is UINT8 with a zero
    point in the asymmetric placements (ort-cpu, openvino, litert)."""
    return ActDtype.UINT8 if asymmetric and act is ActDtype.INT8 else act


WeightFactory = Callable[[nn.Module, QuantizedWeight], nn.Module]


@contextmanager
def tunable_layers(
    module: nn.Module,
    records: Mapping[str, QuantizedWeight],
    ranges: Mapping[str, float | ActRange],
    *,
    asymmetric: bool,
    weight_of: WeightFactory = lambda _layer, record: _ScaledWeight(record),
) -> Iterator[dict[str, tuple[nn.Module, TunedBias | None]]]:
    """The model with every record's layer quantized and tunable: its weight the parametrization
    ``weight_of(layer, record)`` gives (the distillation's scaled codes by default), its bias a
    :class:`TunedBias`, its input fake-quantized as the artifact writes it, with a straight-through
    gradient. Every other parameter is frozen; the model is restored exactly on exit."""
    frozen = [p for p in module.parameters() if p.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    tuned: dict[str, tuple[nn.Module, TunedBias | None]] = {}
    handles = []
    try:
        for name, record in records.items():
            layer = module.get_submodule(name)
            weight = weight_of(layer, record)
            parametrize.register_parametrization(layer, "weight", weight, unsafe=True)
            bias = None
            if getattr(layer, "bias", None) is not None:
                bias = TunedBias(record.bias if record.bias is not None else layer.bias)
                parametrize.register_parametrization(layer, "bias", bias, unsafe=True)
            tuned[name] = (weight, bias)
            act = simulated_act(record.fmt.act, asymmetric=asymmetric)
            if act is not ActDtype.FP16:
                handles.append(layer.register_forward_pre_hook(_input_hook(ranges[name], act)))
        yield tuned
    finally:
        for handle in handles:
            handle.remove()
        for name in tuned:
            layer = module.get_submodule(name)
            for tensor in ("weight", "bias"):
                if parametrize.is_parametrized(layer, tensor):
                    parametrize.remove_parametrizations(layer, tensor, leave_parametrized=False)
        for param in frozen:
            param.requires_grad_(True)


def output_loss(test: HeadOutput, reference: HeadOutput) -> torch.Tensor:
    """Confidence-weighted squared box-corner error (pixels) plus weighted class-probability error."""
    confidence = reference.scores.max(dim=-1).values.detach()
    boxes = ((test.boxes - reference.boxes) ** 2).mean(dim=-1)
    box_term = (confidence * boxes).sum() / confidence.sum().clamp_min(1e-12)
    weight = confidence.clamp_min(0.05)  # background anchors count too: spurious detections
    classes = ((test.scores - reference.scores) ** 2).sum(dim=-1)
    return box_term + CLASS_WEIGHT * (weight * classes).sum() / weight.sum()


def _calibration_loss(network: StagedNetwork, chunks, references) -> float:
    with torch.no_grad():
        return sum(float(output_loss(network.run(c)[0], r)) for c, r in zip(chunks, references, strict=True))


def _snapshot(tuned: Mapping[str, tuple[nn.Module, TunedBias | None]]) -> dict[str, tuple]:
    return {
        name: (w.log_scale.detach().clone(), None if b is None else b.bias.detach().clone())
        for name, (w, b) in tuned.items()
    }


def distill_records(
    network: StagedNetwork,
    records: Mapping[str, QuantizedWeight],
    images: torch.Tensor,
    *,
    act_ranges: Mapping[str, float | ActRange],
    asymmetric: bool,
    steps: int,
    batch: int = 4,
    checks: int = DISTILL_CHECKS,
    progress: Callable[[str], None] | None = None,
    producers: Sequence[ProducerQuant] = (),
) -> dict[str, QuantizedWeight]:
    """``records`` with biases and weight scales tuned so the quantized model's head output
    matches the FP32 model's on ``images``; ``asymmetric``: INT8 inputs are simulated as the
    UINT8 with a zero point that the asymmetric placements write.

    The loss over all of ``images`` is measured before tuning and ``checks`` times during it; the
    lowest wins, so the result never fits the calibration images worse than the records given.
    ``progress`` is called at each of those ``checks`` points. ``producers``: module outputs the
    artifact quantizes where they are made (``quant.producer_quant``).
    """
    started = time.perf_counter()
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    with torch.no_grad():
        references = [network.run(chunk)[0] for chunk in chunks]
    acts = {name: simulated_act(r.fmt.act, asymmetric=asymmetric) for name, r in records.items()}
    with (
        tunable_layers(network.module, records, act_ranges, asymmetric=asymmetric) as tuned,
        quantized_producers(network.module, producers, acts),
        torch.enable_grad(),
    ):
        start_loss, best_loss, best = _tune(
            network, tuned, chunks, references, steps=steps, checks=checks, progress=progress
        )
    result = {name: _tuned_record(records[name], *best[name]) for name in records}
    LOG.info(
        "distilled %d layers in %d steps: calibration loss %.4g -> %.4g in %.1f s",
        len(result),
        steps,
        start_loss,
        best_loss,
        time.perf_counter() - started,
    )
    return result


def _tune(network: StagedNetwork, tuned, chunks, references, *, steps: int, checks: int, progress):
    """Adam over the tunable scales and biases, one chunk per step; the calibration loss is checked
    ``checks`` times: (loss before, lowest loss, the tunables' snapshot at the lowest)."""
    check_at = {round(steps * (i + 1) / checks) for i in range(checks)}
    groups = [
        {"params": [w.log_scale for w, _ in tuned.values()], "lr": LEARNING_RATES["log_scale"]},
        {"params": [b.bias for _, b in tuned.values() if b is not None], "lr": LEARNING_RATES["bias"]},
    ]
    optimizer = torch.optim.Adam(groups)
    start_loss = best_loss = _calibration_loss(network, chunks, references)
    best = _snapshot(tuned)
    for step in range(1, steps + 1):
        index = (step - 1) % len(chunks)
        loss = output_loss(network.run(chunks[index])[0], references[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in check_at:
            current = _calibration_loss(network, chunks, references)
            LOG.info("distill step %d/%d: calibration loss %.4g", step, steps, current)
            if progress is not None:
                progress(f"distill step {step}/{steps}: loss {current:.4g}")
            if current < best_loss:
                best_loss, best = current, _snapshot(tuned)
    return start_loss, best_loss, best


def _tuned_record(
    record: QuantizedWeight, log_scale: torch.Tensor, bias: torch.Tensor | None
) -> QuantizedWeight:
    return replace(
        record,
        scale=record.scale * torch.exp(log_scale),
        bias=record.bias if bias is None else bias,
        method=f"{record.method}+distill",
    )
