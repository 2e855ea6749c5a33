"""Check a ranking the way it will be used: keep its top-K layers unquantized, quantize the rest."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from quantsweep.core.config import DetectConfig, QuantFormat
from quantsweep.data.images import Batch
from quantsweep.metrics.detections import decode
from quantsweep.metrics.map import MapResult, mean_average_precision
from quantsweep.models.network import LayerInfo, StagedNetwork, network_dtype
from quantsweep.models.outputs import HeadOutput
from quantsweep.quant.apply import quantized_layers
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.weights import QuantizedWeight


def evaluate_kept(
    network: StagedNetwork,
    batch: Batch,
    *,
    layers: Sequence[LayerInfo],
    fmt: QuantFormat | None,
    kept: Collection[str],
    batch_size: int,
    detect: DetectConfig,
    act_ranges: Mapping[str, float | ActRange] | None = None,
    device: str = "cpu",
    weights: Mapping[str, QuantizedWeight] | None = None,
) -> MapResult:
    """mAP against ``batch.labels`` with every layer but ``kept`` quantized to ``fmt`` (None: FP32).

    Layers with a record in ``weights`` use it (see ``quantized_layers``).
    """
    if batch.labels is None:
        raise ValueError("evaluation needs labels")
    assignment = {} if fmt is None else {layer.name: fmt for layer in layers if layer.name not in kept}
    outputs = []
    dtype = network_dtype(network)
    with (
        torch.no_grad(),
        quantized_layers(network.module, assignment, act_ranges=act_ranges, weights=weights),
    ):
        for start in range(0, len(batch.images), batch_size):
            chunk = batch.images[start : start + batch_size].to(device=device, dtype=dtype)
            outputs.append(network.run(chunk)[0].float())
    return mean_average_precision(decode(HeadOutput.concat(outputs), detect), batch.labels)
