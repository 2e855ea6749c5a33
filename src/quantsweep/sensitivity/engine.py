"""Exact single-layer sensitivity: quantize one layer, re-run from its block on, compare with FP32.

The unquantized network runs once per image chunk with every block output recorded; a layer in
block ``k`` then only re-runs blocks ``k..end``, since nothing upstream of it can change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from quantsweep.core.config import DetectConfig, QuantFormat
from quantsweep.core.errors import InputError
from quantsweep.data.images import Batch
from quantsweep.metrics.detections import decode, pseudo_labels
from quantsweep.metrics.map import MapResult, mean_average_precision
from quantsweep.metrics.output_errors import output_error
from quantsweep.models.network import LayerInfo, StagedNetwork, cpu_layout, network_dtype
from quantsweep.models.outputs import HeadOutput
from quantsweep.quant.apply import quantized_layers

LOG = logging.getLogger(__name__)
# images per forward pass of the exact sweep, at most: YOLOv10m at 320 px on a 2-core CPU runs 16
# images 10% faster in chunks of 4 than of 8 (activations stay in cache), with the same outputs to
# the bit; the batch size still bounds it from above (memory)
EXACT_CHUNK = 4


@dataclass(frozen=True)
class LayerResult:
    """Everything measured for one layer under one format."""

    name: str
    box_error: float
    elapsed_s: float
    # measured by the exact method only (None for a fast estimate)
    nmse: float | None = None
    sqnr_db: float | None = None
    class_error: float | None = None
    map50_95_vs_fp32: float | None = None
    map_drop_vs_fp32: float | None = None
    map50_95_gt: float | None = None
    map_drop_gt: float | None = None
    method: str = "exact"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerResult:
        """Inverse of :meth:`to_dict` (JSON null SQNR of an exact result stands for infinity)."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if values.get("method", "exact") == "exact" and values.get("sqnr_db") is None:
            values["sqnr_db"] = float("inf")
        return cls(**values)


@dataclass
class Reference:
    """The unquantized model's outputs on the sweep images, and what it scores."""

    recorded: list[list[Any]]
    output: HeadOutput
    pseudo: list[np.ndarray]
    map_vs_self: MapResult
    map_gt: MapResult | None


class ExactSweep:
    """Measures layers one at a time on a fixed image batch.

    The network runs in its own dtype (``set_compute_dtype`` makes it half precision); images are
    moved to ``device`` in that dtype once, and head outputs are scored in float32.
    """

    def __init__(
        self,
        network: StagedNetwork,
        batch: Batch,
        *,
        batch_size: int,
        detect: DetectConfig,
        device: str = "cpu",
    ) -> None:
        self.network = network
        self.batch = batch
        self.detect = detect
        self.device = torch.device(device)
        self.dtype = network_dtype(network)
        images = batch.images.to(device=self.device, dtype=self.dtype)  # once, not per measured layer
        size = min(batch_size, EXACT_CHUNK)
        self.chunks = [cpu_layout(images[i : i + size]) for i in range(0, len(images), size)]
        self.reference = self._reference()

    def _reference(self) -> Reference:
        recorded, outputs = [], []
        with torch.no_grad():
            for chunk in self.chunks:
                out, blocks = self.network.run(chunk, record=True)
                recorded.append(blocks)
                outputs.append(out.float())
        output = HeadOutput.concat(outputs)
        if self.dtype != torch.float32 and not bool(torch.isfinite(output.raw).all()):
            raise InputError(
                f"the model's output overflows {self.dtype} on these images; use --compute-dtype float32"
            )
        detections = decode(output, self.detect)
        pseudo = pseudo_labels(detections, self.detect)
        if not any(len(p) for p in pseudo):
            LOG.warning(
                "the FP32 model has no detection above confidence %.3g on these images: "
                "mAP against its own detections is undefined",
                self.detect.pseudo_label_conf,
            )
        labels = self.batch.labels
        return Reference(
            recorded=recorded,
            output=output,
            pseudo=pseudo,
            map_vs_self=mean_average_precision(detections, pseudo),
            map_gt=mean_average_precision(detections, labels) if labels is not None else None,
        )

    def run_quantized(
        self, assignment: Mapping[str, QuantFormat], *, start_block: int, act_ranges=None, weights=None
    ):
        """Head output with ``assignment`` applied, re-running only from ``start_block``.

        ``weights`` (layer -> ``QuantizedWeight``) are the method's records; without one a layer is
        rounded to nearest.
        """
        outputs = []
        quantized = quantized_layers(self.network.module, assignment, act_ranges=act_ranges, weights=weights)
        with torch.no_grad(), quantized:
            for chunk, recorded in zip(self.chunks, self.reference.recorded, strict=True):
                if start_block == 0:
                    outputs.append(self.network.run(chunk)[0].float())
                else:
                    outputs.append(self.network.resume(start_block, recorded).float())
        return HeadOutput.concat(outputs)

    def measure(self, layer: LayerInfo, fmt: QuantFormat, *, act_ranges=None, weights=None) -> LayerResult:
        """Quantize ``layer`` alone under ``fmt`` and compare the whole model with FP32."""
        started = time.perf_counter()
        output = self.run_quantized(
            {layer.name: fmt}, start_block=layer.block_index, act_ranges=act_ranges, weights=weights
        )
        return self.score(layer.name, output, started=started)

    def score(self, name: str, output: HeadOutput, *, started: float) -> LayerResult:
        """All metrics of one quantized output against the reference."""
        ref = self.reference
        error = output_error(output, ref.output)
        detections = decode(output, self.detect)
        vs_self = mean_average_precision(detections, ref.pseudo)
        gt = None
        if self.batch.labels is not None and ref.map_gt is not None:
            gt = mean_average_precision(detections, self.batch.labels)
        return LayerResult(
            name=name,
            nmse=error.nmse,
            sqnr_db=error.sqnr_db,
            box_error=error.box_error,
            class_error=error.class_error,
            map50_95_vs_fp32=vs_self.map50_95,
            map_drop_vs_fp32=ref.map_vs_self.map50_95 - vs_self.map50_95,
            map50_95_gt=None if gt is None else gt.map50_95,
            map_drop_gt=None if gt is None else ref.map_gt.map50_95 - gt.map50_95,
            elapsed_s=time.perf_counter() - started,
        )
