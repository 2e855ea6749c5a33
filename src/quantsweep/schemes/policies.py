"""Turn a ranking into schemes: top-K, a bit budget, and two references at the same K."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
