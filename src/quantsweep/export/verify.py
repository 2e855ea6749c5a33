"""Check every artifact the way a deployer would: valid, exactly as planned, runnable, faithful."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from quantsweep.config import QuantFormat
from quantsweep.export.inspect import average_weight_bits, precision_counts
from quantsweep.export.onnx_model import INPUT_NAME
from quantsweep.models.network import StagedNetwork
from quantsweep.quant.apply import quantized_layers
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.weights import QuantizedWeight


def torch_export_output(
    network: StagedNetwork,
    images: torch.Tensor,
    *,
    assignment: Mapping[str, QuantFormat],
    act_ranges: Mapping[str, float | ActRange] | None,
    weights: Mapping[str, QuantizedWeight] | None = None,
) -> np.ndarray:
    """The Torch model's output in the exported form (head in export mode), under fake quantization.

    ``weights`` (layer -> record) are the precomputed quantized weights the artifact carries.
    """
    head = network.blocks[-1]
    previous = getattr(head, "export", False)
    head.export = True
    outputs = []
    try:
        with (
            torch.no_grad(),
            quantized_layers(network.module, assignment, act_ranges=act_ranges, weights=weights),
        ):
            for image in images:
                outputs.append(network.module(image[None]).cpu().numpy())
    finally:
        head.export = previous
    return np.concatenate(outputs)


def run_onnx(path: Path, images: torch.Tensor, *, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """Run an ONNX model image by image (static batch 1); return the outputs and the providers used."""
    session = ort.InferenceSession(str(path), providers=list(providers))
    outputs = [session.run(None, {INPUT_NAME: image[None].numpy()})[0] for image in images]
    return np.concatenate(outputs), session.get_providers()


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
) -> dict[str, Any]:
    """Checker, per-precision node counts against the plan, an ONNX Runtime run, Torch agreement, size."""
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    counts = precision_counts(model)
    output, providers = run_onnx(path, images)
    size = path.stat().st_size
    return {
        "file": path.name,
        "checker": "passed",
        "precision_counts": counts,
        "expected_counts": None if expected_counts is None else dict(sorted(expected_counts.items())),
        "counts_match": None if expected_counts is None else counts == dict(sorted(expected_counts.items())),
        "ort_providers": providers,
        "ort_output_shape": list(output.shape),
        "torch_vs_onnx_rel_l2": relative_l2(output, torch_output),
        "images": len(images),
        "size_bytes": size,
        "fp32_over_size": fp32_bytes / size,
        "avg_weight_bits": average_weight_bits(model),
    }
