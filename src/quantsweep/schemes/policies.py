"""Turn a ranking into schemes: top-K, a bit budget, and two references at the same K."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quantsweep.core.config import ActDtype, HighPrecision, LowPrecision, QuantFormat, WeightDtype
from quantsweep.schemes.scheme_records import LayerAssignment, Policy, Precision, Scheme


@dataclass(frozen=True)
class RankedLayer:
    """A layer as the sensitivity report gives it (rank 1 = most sensitive)."""

    name: str
    rank: int
    sensitivity: float
    params: int
    block_index: int
    exec_order: int


@dataclass(frozen=True)
class SchemeSpace:
    """What every scheme is built from: the ranking, the ONNX names, and the two precisions."""

    ranked: Sequence[RankedLayer]
    onnx_nodes: Mapping[str, str]
    low: Precision
    high: Precision

    def build(self, name: str, policy: Policy, kept: Sequence[str]) -> Scheme:
        """A scheme keeping ``kept`` at ``high`` and everything else at ``low``."""
        kept_set = set(kept)
        unknown = kept_set - {layer.name for layer in self.ranked}
        if unknown:
            raise ValueError(f"kept layers not in the ranking: {sorted(unknown)}")
        layers = tuple(
            LayerAssignment(
                torch_name=layer.name,
                onnx_node=self.onnx_nodes[layer.name],
                precision=self.high if layer.name in kept_set else self.low,
                sensitivity=layer.sensitivity,
                rank=layer.rank,
                params=layer.params,
            )
            for layer in sorted(self.ranked, key=lambda r: r.exec_order)
        )
        ordered_kept = tuple(layer.name for layer in self.ranked if layer.name in kept_set)
        return Scheme(name=name, policy=policy, kept_layers=ordered_kept, layers=layers)


def top_k(space: SchemeSpace, k: int) -> Scheme:
    """Keep the K most sensitive layers at high precision."""
    return space.build(f"k{k}", Policy.TOP_K, [layer.name for layer in space.ranked[:k]])


def random_k(space: SchemeSpace, k: int, *, seed: int) -> Scheme:
    """Keep K layers chosen at random (seeded): what a ranking must beat."""
    names = sorted(layer.name for layer in space.ranked)
    return space.build(f"random_k{k}", Policy.RANDOM, random.Random(seed).sample(names, k))


def first_and_head(space: SchemeSpace, k: int) -> Scheme:
    """Keep the first conv plus K-1 head layers, those nearest the output first (the usual rule of thumb)."""
    by_order = sorted(space.ranked, key=lambda r: r.exec_order)
    head_block = max(layer.block_index for layer in by_order)
    head = [layer.name for layer in reversed(by_order) if layer.block_index == head_block]
    kept = [by_order[0].name, *head][:k]
    return space.build(f"first_head_k{k}", Policy.FIRST_HEAD, kept)


def budget(space: SchemeSpace, *, target_bits: float) -> Scheme:
    """Promote layers to high precision, best sensitivity per added bit first, within ``target_bits``.

    The average is over all quantizable parameters; a layer that would overshoot the budget is
    skipped and smaller ones are still tried.
    """
    total = sum(layer.params for layer in space.ranked)
    bits = sum(layer.params * space.low.weight_bits for layer in space.ranked)
    if bits / total > target_bits:
        raise ValueError(f"--target-bits {target_bits} is below the all-low average {bits / total:.2f}")
    extra = space.high.weight_bits - space.low.weight_bits

    def value(layer: RankedLayer) -> float:
        return layer.sensitivity / max(layer.params * extra, 1)

    kept = []
    for layer in sorted(space.ranked, key=value, reverse=True):
        added = layer.params * extra
        if (bits + added) / total <= target_bits:
            kept.append(layer.name)
            bits += added
    return space.build(f"budget_{target_bits:g}bits", Policy.BUDGET, kept)


def precisions(fmt: QuantFormat, *, low: LowPrecision, high: HighPrecision) -> tuple[Precision, Precision]:
    """Low and high precision for a sweep combination.

    ``auto`` is the swept combination itself; INT4 and INT8 keep the sweep's activation type; FP8
    is the usual W8A8 FP8 recipe. Kept INT8 layers take INT8 activations only when the rest does
    (INT8 weights never pair with FP8 inputs). A 7-bit INT8 sweep (``int7``, for CPUs whose INT8
    products saturate) keeps its 7-bit codes wherever INT8 is asked for.
    """
    int8 = WeightDtype.INT7 if fmt.weight is WeightDtype.INT7 else WeightDtype.INT8
    if low is LowPrecision.AUTO:
        low_p = Precision(fmt.weight, fmt.act, fmt.granularity, fmt.int4_block_size)
    elif low is LowPrecision.INT4:
        low_p = Precision(WeightDtype.INT4, fmt.act, fmt.granularity, fmt.int4_block_size)
    elif low is LowPrecision.INT8:
        act = fmt.act if fmt.act is not ActDtype.FP8 else ActDtype.INT8
        low_p = Precision(int8, act, fmt.granularity)
    else:
        low_p = Precision(WeightDtype.FP8, ActDtype.FP8, fmt.granularity)
    if high is HighPrecision.FLOAT:
        return low_p, Precision(None)
    act = ActDtype.INT8 if low_p.act is ActDtype.INT8 else ActDtype.FP16
    return low_p, Precision(int8, act, fmt.granularity)
