"""Check every artifact the way a deployer would: valid, exactly as planned, runnable, faithful."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from quantsweep.core.config import QuantFormat
from quantsweep.models.network import StagedNetwork, cpu_layout
from quantsweep.models.outputs import OUTPUT_CONVENTION_KEY, OutputConvention
from quantsweep.onnx_graph.export import INPUT_NAME
from quantsweep.onnx_graph.inspect import average_weight_bits, precision_counts
from quantsweep.onnx_graph.ort_sessions import SessionOptions, ort_session
from quantsweep.quant.apply import quantized_layers
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.producer_quant import ProducerQuant
from quantsweep.quant.weights import QuantizedWeight


def torch_export_output(
    network: StagedNetwork,
    images: torch.Tensor,
    *,
    assignment: Mapping[str, QuantFormat],
    act_ranges: Mapping[str, float | ActRange] | None,
    weights: Mapping[str, QuantizedWeight] | None = None,
    producers: Sequence[ProducerQuant] = (),
) -> np.ndarray:
    """The Torch model's output in the exported form (head in export mode), under fake quantization.

    ``weights`` (layer -> record) are the precomputed quantized weights the artifact carries;
    ``producers`` the module outputs it quantizes where they are made.
    """
    head = network.blocks[-1]
    previous = getattr(head, "export", False)
    head.export = True
    outputs = []
    try:
        with (
            torch.no_grad(),
            quantized_layers(
                network.module, assignment, act_ranges=act_ranges, weights=weights, producers=producers
            ),
        ):
            for image in images:
                outputs.append(network.module(cpu_layout(image[None])).cpu().numpy())
    finally:
        head.export = previous
    return np.concatenate(outputs)


def run_onnx(
    path: Path,
    images: torch.Tensor,
    *,
    graph_as_written: bool = False,
):
    """Run an ONNX model image by image (static batch 1); return the outputs and the providers used.

    ``graph_as_written`` limits ONNX Runtime to basic graph optimizations: at its default level the
    CPU provider fuses an INT4/INT8 DequantizeLinear + MatMul into MatMulNBits, which computes with
    its own (lower) precision, so the artifact's own semantics are checked at the basic level.
    """
    session = ort_session(path, SessionOptions(graph_as_written=graph_as_written))
    outputs = [session.run(None, {INPUT_NAME: image[None].numpy()})[0] for image in images]
    return np.concatenate(outputs), session.get_providers()


def canonical_rows(output: np.ndarray, model: onnx.ModelProto) -> np.ndarray:
    """Top-k detection rows (RT-DETR, YOLOv10 NMS-free) ordered by (class, box position) instead of
    score, so that two runs whose scores differ in the last bits compare row by row; the raw
    per-anchor convention is returned unchanged.
    """
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(OUTPUT_CONVENTION_KEY) not in (OutputConvention.RTDETR, OutputConvention.END2END):
        return output
    rows = []
    for det in output:
        order = np.lexsort((det[:, 1], det[:, 0], det[:, 5]))
        rows.append(det[order])
    return np.stack(rows)


def relative_l2(test: np.ndarray, reference: np.ndarray) -> float:
    """||test - reference|| / ||reference||."""
    return float(np.linalg.norm(test - reference) / max(np.linalg.norm(reference), 1e-30))


def verify_artifact(
    path: Path,
    *,
    expected_counts: Mapping[str, int] | None,
    images: torch.Tensor,
    torch_output: np.ndarray,
    fp32_bytes: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """Checker, per-precision node counts against the plan, an ONNX Runtime run, Torch agreement, size.

    Returns the record and ONNX Runtime's output of the graph as written (the scale the runtime
    check judges other runtimes by, so it is not computed twice).
    """
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    counts = precision_counts(model)
    output, providers = run_onnx(path, images)
    as_written, _ = run_onnx(path, images, graph_as_written=True)
    reference = canonical_rows(torch_output, model)
    size = path.stat().st_size
    record = {
        "file": path.name,
        "checker": "passed",
        "precision_counts": counts,
        "expected_counts": None if expected_counts is None else dict(sorted(expected_counts.items())),
        "counts_match": None if expected_counts is None else counts == dict(sorted(expected_counts.items())),
        "ort_providers": providers,
        "ort_output_shape": list(output.shape),
        "torch_vs_onnx_rel_l2": relative_l2(canonical_rows(as_written, model), reference),
        # what ONNX Runtime's default optimizations compute (MatMulNBits fusion of Linear layers)
        "torch_vs_onnx_optimized_rel_l2": relative_l2(canonical_rows(output, model), reference),
        "images": len(images),
        "size_bytes": size,
        "fp32_over_size": fp32_bytes / size,
        "avg_weight_bits": average_weight_bits(model),
    }
    return record, as_written
