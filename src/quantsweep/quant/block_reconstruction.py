"""Block reconstruction: re-round each block's weight codes against the FP32 block output.

AdaRound's rounding choice, optimized per block as BRECQ does, with the activations quantized in
the loop. Blocks run in order. Each block reads its input from the quantized model as far as it
is reconstructed, so a block corrects the error the earlier ones left. Its target is the FP32
model's output of that block. Every integer weight of the block's quantized layers chooses
between the two codes around its float value (``floor(w / s) + h``, ``h`` 0 or 1, learned
through AdaRound's rectified sigmoid). The start leans towards the code the sequential pass
(GPTQ) chose. The layer's bias is tuned with it. Scales and zero points stay, so every
target writes the result as it writes any record.

The loss is the output error relative to the FP32 output's energy. For the last block it is the
head loss the distillation uses (``distill.output_loss``). The forward pass always runs the hard
codes (the relaxed rounding only carries the gradient back), so what is optimized is what ships;
AdaRound's annealed regularizer is not needed for that. A quarter of the calibration batches
(:data:`HOLDOUT`, when there are at least four) only checks: the block is left at the state that
fits their FP32 output best, the records' own included, so a block never gets worse on images it
was not fitted to. Without that check, 16 images were overfitted: YOLOv10s' head loss halved on
them and fell by an eighth on other images. FP8 records stay as they are (no rounding choice).

Cost: ``steps`` forward and backward passes of one block on ``batch`` images, per block with
quantized layers, about the distillation's ``steps`` over the whole model. At most
:data:`MAX_IMAGES_PIXELS` worth of images is used (128 at 320 px, 32 at 640 px). Memory: the FP32
and quantized block inputs of those images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from quantsweep.core.config import WeightDtype
from quantsweep.models.network import StagedNetwork
from quantsweep.quant.distill import TunedBias, output_loss, simulated_act, tunable_layers
from quantsweep.quant.numerics import INT_LIMITS, ActRange
from quantsweep.quant.producer_quant import ProducerQuant, quantized_producers
from quantsweep.quant.streaming import BlockStates
from quantsweep.quant.weights import UNSIGNED_MAX, QuantizedWeight, decode

LOG = logging.getLogger(__name__)
ZETA, GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch
START_LEAN = 0.3  # h starts at 0.3 (floor) or 0.7 (ceil): the sequential pass's code
LEARNING_RATES = {"rounding": 1e-2, "bias": 1e-3}
CHECKS = 4  # loss checks per block on the held-out batches (the lowest wins)
HOLDOUT = 0.25  # share of the batches that only check (none with fewer than four batches)
MAX_IMAGES_PIXELS = 128 * 320 * 320


class _Rounding(nn.Module):
    """A weight parametrization: ``(floor(w / s) + h - zero) * s`` with a learned ``h``.

    ``mode``: "record" gives the record's own codes, "hard" ``h`` rounded to 0 or 1, "ste" the
    hard codes forward and the relaxed ``h``'s gradient backward (a straight-through estimator).
    """

    def __init__(self, weight: torch.Tensor, record: QuantizedWeight) -> None:
        super().__init__()
        self.record, self.scale, self.zero = record, record.scale, record.zero_point
        offset = 0.0 if self.zero is None else self.zero
        self.base = torch.floor(weight.detach().float() / self.scale + offset)
        if self.zero is None:
            self.low, self.high = INT_LIMITS[record.fmt.weight][:2]
        else:
            self.low, self.high = 0, UNSIGNED_MAX[record.fmt.weight]
        chosen = (record.codes.float() - self.base).clamp(0, 1)
        start = START_LEAN + (1 - 2 * START_LEAN) * chosen
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (start - GAMMA) - 1))
        self.mode = "record"

    def soft(self) -> torch.Tensor:
        """The relaxed rounding ``h`` in [0, 1]."""
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def codes(self) -> torch.Tensor:
        """The codes of the current mode."""
        if self.mode == "record":
            return self.record.codes.float()
        soft = self.soft()
        hard = (soft >= 0.5).float()
        # "ste": the hard codes forward, the relaxed rounding's gradient backward
        rest = hard if self.mode == "hard" else hard + soft - soft.detach()
        return torch.clamp(self.base + rest, self.low, self.high)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return decode(self.codes(), self.scale, self.zero)


class _Fixed(nn.Module):
    """A weight parametrization: the record's weight as it is (FP8 codes)."""

    def __init__(self, record: QuantizedWeight) -> None:
        super().__init__()
        self.weight = record.dequantize()

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return self.weight


def _tunable(record: QuantizedWeight) -> bool:
    return record.fmt.weight is not WeightDtype.FP8


def _weight_of(layer: nn.Module, record: QuantizedWeight) -> nn.Module:
    return _Rounding(layer.weight, record) if _tunable(record) else _Fixed(record)


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []


def _block_loss(network: StagedNetwork, index: int) -> Callable[[Any, Any], torch.Tensor]:
    """Output error against the FP32 block output: the head loss for the last block, else the
    squared error relative to the FP32 output's energy."""
    if index == len(network.blocks) - 1:
        return lambda test, target: output_loss(network.finish(test), network.finish(target))

    def relative(test: Any, target: Any) -> torch.Tensor:
        pairs = list(zip(_tensors(test), _tensors(target), strict=True))
        error = sum(((t - r.detach()) ** 2).sum() for t, r in pairs)
        return error / sum((r.detach() ** 2).sum() for _, r in pairs).clamp_min(1e-12)

    return relative


def _set_mode(tuned: Mapping[str, tuple[nn.Module, TunedBias | None]], mode: str) -> None:
    for weight, _ in tuned.values():
        if isinstance(weight, _Rounding):
            weight.mode = mode


def _mean_loss(
    states: BlockStates, index: int, targets: Sequence[Any], loss: Callable, which: Sequence[int]
) -> float:
    with torch.no_grad():
        return sum(float(loss(states.step(index, i), targets[i])) for i in which) / len(which)


def _snapshot(tuned: Mapping[str, tuple[nn.Module, TunedBias | None]]) -> dict[str, tuple]:
    return {
        name: (
            weight.v.detach().clone() if isinstance(weight, _Rounding) else None,
            None if bias is None else bias.bias.detach().clone(),
        )
        for name, (weight, bias) in tuned.items()
    }


def _restore(tuned: Mapping[str, tuple[nn.Module, TunedBias | None]], snapshot: Mapping[str, tuple]) -> None:
    with torch.no_grad():
        for name, (weight, bias) in tuned.items():
            v, b = snapshot[name]
            if v is not None:
                weight.v.copy_(v)
            if b is not None:
                bias.bias.copy_(b)


def _optimize(
    states: BlockStates,
    index: int,
    targets: Sequence[Any],
    *,
    tuned: Mapping[str, tuple[nn.Module, TunedBias | None]],
    loss: Callable,
    steps: int,
    start_loss: float,
    split: tuple[Sequence[int], Sequence[int]],
) -> float:
    """Adam on the rounding variables and biases against the block's output loss on the fitting
    batches (``split[0]``), the forward pass on the hard codes; the loss on the checking batches
    (``split[1]``) is measured :data:`CHECKS` times and the block is left at the best state seen
    (the records' own when nothing beat ``start_loss``)."""
    roundings = [w for w, _ in tuned.values() if isinstance(w, _Rounding)]
    optimizer = torch.optim.Adam(
        [
            {"params": [w.v for w in roundings], "lr": LEARNING_RATES["rounding"]},
            {"params": [b.bias for _, b in tuned.values() if b is not None], "lr": LEARNING_RATES["bias"]},
        ]
    )
    check_at = {round(steps * (i + 1) / CHECKS) for i in range(CHECKS)}
    best_loss, best = start_loss, None
    for step in range(1, steps + 1):
        _set_mode(tuned, "ste")
        which = split[0][(step - 1) % len(split[0])]
        with torch.enable_grad():
            total = loss(states.step(index, which), targets[which])
            optimizer.zero_grad()
            total.backward()
        optimizer.step()
        if step in check_at:
            _set_mode(tuned, "hard")
            current = _mean_loss(states, index, targets, loss, split[1])
            if current < best_loss:
                best_loss, best = current, _snapshot(tuned)
    if best is None:
        _set_mode(tuned, "record")
    else:
        _restore(tuned, best)
        _set_mode(tuned, "hard")
    return best_loss


def _reconstruct_block(
    states: BlockStates,
    index: int,
    targets: Sequence[Any],
    *,
    tuned: Mapping[str, tuple[nn.Module, TunedBias | None]],
    records: Mapping[str, QuantizedWeight],
    steps: int,
    split: tuple[Sequence[int], Sequence[int]],
) -> tuple[dict[str, QuantizedWeight], float, float]:
    """Re-round one block; the new records (none when the hard rounding does not fit the FP32
    output better than ``records``), the loss before and the loss after. Leaves the block in the
    mode of the records it returns."""
    loss = _block_loss(states.network, index)
    _set_mode(tuned, "record")
    before = _mean_loss(states, index, targets, loss, split[1])
    start = _snapshot(tuned)
    after = _optimize(
        states, index, targets, tuned=tuned, loss=loss, steps=steps, start_loss=before, split=split
    )
    if after >= before:
        _restore(tuned, start)
        return {}, before, after
    chosen = {}
    for name, (weight, bias) in tuned.items():
        record = records[name]
        codes = weight.codes().detach().clone() if isinstance(weight, _Rounding) else record.codes
        new_bias = record.bias if bias is None else bias.bias.detach().clone()
        chosen[name] = replace(record, codes=codes, bias=new_bias, method=f"{record.method}+reconstruct")
    return chosen, before, after


def _report(
    index: int,
    block: Mapping[str, QuantizedWeight],
    losses: tuple[float, float],
    *,
    kept: bool,
    progress: Callable[[str], None] | None,
) -> None:
    suffix = " (kept the records)" if kept else ""
    LOG.info("reconstruct block %d (%d layers): loss %.4g -> %.4g%s", index, len(block), *losses, suffix)
    if progress is not None:
        progress(f"reconstruct block {index}: loss {losses[0]:.3g} -> {losses[1]:.3g}")


def _fit_and_check(count: int) -> tuple[list[int], list[int]]:
    """The batches fitted and the batches that choose the state (:data:`HOLDOUT` of them, held
    out so that the choice is not overfitted; all of them when there are fewer than four)."""
    held = int(count * HOLDOUT)
    order = list(range(count))
    return order[: count - held], (order[count - held :] if held else order)


def reconstruct_records(
    network: StagedNetwork,
    records: Mapping[str, QuantizedWeight],
    images: torch.Tensor,
    *,
    act_ranges: Mapping[str, float | ActRange],
    asymmetric: bool,
    steps: int,
    batch: int = 4,
    progress: Callable[[str], None] | None = None,
    producers: Sequence[ProducerQuant] = (),
) -> dict[str, QuantizedWeight]:
    """``records`` with each block's integer codes re-rounded and biases tuned so that the block,
    reading the quantized model's input, reproduces the FP32 model's block output on ``images``
    (module docstring); ``steps`` optimizer steps per block. ``asymmetric``: INT8 inputs are
    simulated as UINT8 with a zero point, as the asymmetric placements write them.
    ``producers``: module outputs the artifact quantizes where they are made."""
    started = time.perf_counter()
    limit = max(batch, MAX_IMAGES_PIXELS // (images.shape[-1] * images.shape[-2]))
    batches = [images[i : i + batch] for i in range(0, min(len(images), limit), batch)]
    split = _fit_and_check(len(batches))
    acts = {name: simulated_act(r.fmt.act, asymmetric=asymmetric) for name, r in records.items()}
    by_block: dict[int, list[str]] = {}
    for name in records:
        by_block.setdefault(network.block_of(name), []).append(name)
    floats, quants = BlockStates(network, batches), BlockStates(network, batches)
    result, totals = dict(records), [0.0, 0.0]
    for index in range(len(network.blocks)):
        targets = floats.run(index)
        block = {name: records[name] for name in by_block.get(index, [])}
        with (
            tunable_layers(
                network.module, block, act_ranges, asymmetric=asymmetric, weight_of=_weight_of
            ) as tuned,
            quantized_producers(network.module, producers, acts),
        ):
            if any(isinstance(weight, _Rounding) for weight, _ in tuned.values()):
                chosen, before, after = _reconstruct_block(
                    quants, index, targets, tuned=tuned, records=block, steps=steps, split=split
                )
                result.update(chosen)
                _report(index, block, (before, after), kept=not chosen, progress=progress)
                totals[0] += before
                totals[1] += min(before, after)
            outputs = quants.run(index)
        floats.advance(index, targets)
        quants.advance(index, outputs)
    LOG.info(
        "reconstructed %d layers on %d images in %.1f s: summed block loss %.4g -> %.4g",
        len(records),
        sum(len(b) for b in batches),
        time.perf_counter() - started,
        *totals,
    )
    return result
