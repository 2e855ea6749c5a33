"""Accuracy-recovery methods that keep every layer quantized, registered by ``Recovery`` kind.

A method takes the sequential pass's records and returns records of the same formats (codes,
scales, zero points, biases), so every target writes them as it writes any record. A new method
is one module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from quantsweep.core.config import Recovery, WeightQuantConfig
from quantsweep.models.network import StagedNetwork
from quantsweep.quant.block_reconstruction import reconstruct_records
from quantsweep.quant.distill import distill_records
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.producer_quant import ProducerQuant
from quantsweep.quant.weights import QuantizedWeight

RecoveryMethod = Callable[..., dict[str, QuantizedWeight]]


def reconstruct_then_distill(
    network: StagedNetwork, records: Mapping[str, QuantizedWeight], images: torch.Tensor, **kwargs
) -> dict[str, QuantizedWeight]:
    """Block reconstruction (the codes), then distillation (weight scales and biases) on its result."""
    return distill_records(network, reconstruct_records(network, records, images, **kwargs), images, **kwargs)


RECOVERY_METHODS: dict[Recovery, RecoveryMethod] = {
    Recovery.DISTILL: distill_records,
    Recovery.RECONSTRUCT: reconstruct_records,
    Recovery.RECONSTRUCT_DISTILL: reconstruct_then_distill,
}


def recover(
    network: StagedNetwork,
    records: Mapping[str, QuantizedWeight],
    images: torch.Tensor,
    *,
    config: WeightQuantConfig,
    act_ranges: Mapping[str, float | ActRange],
    asymmetric: bool,
    progress: Callable[[str], None] | None = None,
    producers: Sequence[ProducerQuant] = (),
) -> dict[str, QuantizedWeight]:
    """``records`` after ``config.recovery`` (unchanged for ``none``, and for ``auto``, which the
    search applies where it is needed); ``progress`` hears from the method as it goes."""
    if config.recovery in (Recovery.NONE, Recovery.AUTO):
        return dict(records)
    method = RECOVERY_METHODS[config.recovery]
    return method(
        network,
        records,
        images,
        act_ranges=act_ranges,
        asymmetric=asymmetric,
        steps=config.recovery_steps,
        progress=progress,
        producers=producers,
    )
