"""ONNX Runtime sessions opened the same way everywhere (verification, evaluation, search)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

# ONNX Runtime 1.32's MatMulAddFusion rewrites a Q/DQ MatMul on a 3-D input (a Linear layer with
# INT8 activations, e.g. in RT-DETR) into a Gemm with reshapes whose new QuantizeLinear gets a
# UINT8 zero point but an INT8 output type, and the session fails to load; without it the graph
# runs as written.
DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def open_session(
    path: Path, *, provider: str = "CPUExecutionProvider", graph_as_written: bool = False
) -> ort.InferenceSession:
    """A session on one provider; ``graph_as_written`` keeps to basic graph optimizations (no
    MatMulNBits fusion of quantized Linear weights, which computes in lower precision).
    """
    options = ort.SessionOptions()
    if graph_as_written:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(
        str(path), options, providers=[provider], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )
