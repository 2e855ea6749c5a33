"""The fast and hybrid methods' first pass: every layer screened with round-to-nearest weights.

GPTQ needs each layer's input statistics and a column-by-column solve; for every layer of the
testbed that took as long as half an exact sweep, more than the fast estimate it fed. Rankings by
the fast estimate with round-to-nearest weights agree with the exact GPTQ sweep at the bottom and
the middle (Spearman 0.92 on the testbed) but not at the very top, where it matters (top-10
overlap 7). So every layer is screened with round-to-nearest weights (no statistics, about four
forward passes), and only the layers the screen ranks highest are quantized by the configured
method and estimated again; those rank first (benchmarks/fast_vs_exact.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from quantsweep.core.config import QuantFormat, SweepConfig, SweepMethod, WeightMethod, WeightQuantConfig
from quantsweep.data.images import Batch
from quantsweep.models.network import LayerInfo, StagedNetwork
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.scheme import quantize_each_alone
from quantsweep.sensitivity.fast import FAST_CHUNK
from quantsweep.sensitivity.fast import estimate as fast_estimate

FAST_REFINE = 20  # layers the fast method re-estimates with the configured quantizer's weights
# the screen only has to find the refine set; half the images do (the refined layers use all)
SCREEN_IMAGES = 8
# the fast method's refined layers take their quantizer statistics (GPTQ's Hessian) from as many;
# the hybrid method's from every image, so that its exact measurements are the exact sweep's
REFINE_STATS_IMAGES = 8
SCREEN_METHOD = "screen"  # a LayerResult estimated with round-to-nearest weights only


def hybrid_size(config: SweepConfig) -> int:
    """How many layers the hybrid method measures exactly."""
    return config.hybrid_exact if config.hybrid_exact is not None else 2 * config.top_k + 10


def refine_size(config: SweepConfig) -> int:
    """How many screened layers get the configured quantizer (every one the hybrid measures)."""
    size = max(FAST_REFINE, 2 * config.top_k)
    return max(size, hybrid_size(config)) if config.method is SweepMethod.HYBRID else size


def refined_layers(config: SweepConfig, screen: Mapping[str, float]) -> list[str]:
    """The layers the screen ranks highest (largest estimated box error first)."""
    return sorted(screen, key=lambda name: -screen[name])[: refine_size(config)]


def screen_estimates(
    config: SweepConfig,
    network: StagedNetwork,
    batch: Batch,
    layers: Sequence[LayerInfo],
    *,
    formats: Sequence[QuantFormat],
    act_ranges: Mapping[str, float | ActRange] | None,
) -> dict[str, dict[str, float]]:
    """``{format name: {layer: estimated box error}}`` with round-to-nearest weights."""
    rounding = WeightQuantConfig(
        method=WeightMethod.RTN, symmetry=config.quantizer.symmetry, bias_correction=False
    )
    names = [layer.name for layer in layers]
    records = quantize_each_alone(
        network, names, batch.images, formats=formats, config=rounding, act_ranges=act_ranges
    )
    batch = Batch(batch.images[:SCREEN_IMAGES], None)
    return {
        fmt.name: fast_estimate(
            network,
            batch,
            layers,
            fmt=fmt,
            act_ranges=act_ranges,
            weights=records[fmt.name],
            batch_size=min(config.batch_size, FAST_CHUNK),
            device=config.device,
            seed=config.seed,
        ).box_error
        for fmt in formats
    }
