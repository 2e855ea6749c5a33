"""Units of sweep work that any executor can run: a combination and a run of its layers.

A shard is measured by an :class:`~quantsweep.sensitivity.engine.ExactSweep` that already holds the FP32
reference, so every layer in it re-runs only from its own block (the same prefix reuse as a single
process). Outcomes are plain data, so they travel between processes and machines unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from quantsweep.core.config import QuantFormat, SweepConfig
from quantsweep.models.network import LayerInfo
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.weights import QuantizedWeight
from quantsweep.sensitivity.engine import ExactSweep, LayerResult

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Layers of one combination measured together, in execution order."""

    index: int
    fmt: QuantFormat
    layers: tuple[str, ...]


@dataclass(frozen=True)
class LayerOutcome:
    """One layer of a shard: its result, or why it could not be measured."""

    combination: str
    layer: str
    result: LayerResult | None
    error: str | None = None


@dataclass
class SweepWork:
    """What a worker needs to measure shards: the driver's engine (with the FP32 reference), the
    layers, the shared activation ranges and the config that produced them.

    Remote executors rebuild the engine from ``config`` and ``engine.batch``; the activation ranges
    are calibrated once by the driver and shipped, never recomputed by a worker.
    """

    config: SweepConfig
    engine: ExactSweep
    layers: Sequence[LayerInfo]
    act_ranges: dict[str, ActRange] | None
    # {format name: {layer: record}}: each layer quantized alone by the configured method, computed
    # once by the driver and shipped like the ranges
    weights: dict[str, dict[str, QuantizedWeight]] | None = None


def auto_shard_size(layers: int, *, workers: int, per_worker: int = 4) -> int:
    """Layers per shard so that each worker gets about ``per_worker`` shards of a combination."""
    return max(1, math.ceil(layers / (max(1, workers) * per_worker)))


def plan_shards(pending: Sequence[tuple[QuantFormat, Sequence[str]]], *, size: int) -> list[Shard]:
    """Split each combination's pending layers into shards of at most ``size`` layers, in order."""
    shards: list[Shard] = []
    for fmt, names in pending:
        for start in range(0, len(names), size):
            shards.append(Shard(len(shards), fmt, tuple(names[start : start + size])))
    return shards


def measure_shard(
    engine: ExactSweep,
    shard: Shard,
    *,
    layers: Mapping[str, LayerInfo],
    act_ranges: Mapping[str, ActRange] | None,
    weights: Mapping[str, Mapping[str, QuantizedWeight]] | None = None,
) -> Iterator[LayerOutcome]:
    """Measure the shard's layers one by one; a layer that cannot be quantized is reported, not raised."""
    records = None if weights is None else weights.get(shard.fmt.name)
    for name in shard.layers:
        try:
            result = engine.measure(layers[name], shard.fmt, act_ranges=act_ranges, weights=records)
        except (RuntimeError, ValueError) as exc:
            LOG.warning("layer %s failed under %s: %s", name, shard.fmt.name, exc)
            yield LayerOutcome(shard.fmt.name, name, None, str(exc))
            continue
        yield LayerOutcome(shard.fmt.name, name, result)
