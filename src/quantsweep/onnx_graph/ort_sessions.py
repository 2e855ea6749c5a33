"""The one place ONNX Runtime sessions are created, with the options each use needs."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

# ONNX Runtime 1.32's MatMulAddFusion rewrites a Q/DQ MatMul on a 3-D input (a Linear layer with
# INT8 activations, e.g. in RT-DETR) into a Gemm with reshapes whose new QuantizeLinear gets a
# UINT8 zero point but an INT8 output type, and the session fails to load; without it the graph
# runs as written.
DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


@dataclass(frozen=True)
class SessionOptions:
    """What a deployment would set: graph optimization, QDQ handling, threads, where to dump the graph.

    ``disable_quant_qdq`` makes ONNX Runtime treat Q/DQ as plain ops (no integer fusion), which is
    faster for INT4-weight convs that it cannot fuse anyway: the weight DQs are then constant-folded.
    """

    provider: str = "CPUExecutionProvider"
    disable_quant_qdq: bool = False
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    optimized_model_path: Path | None = None
    # basic optimizations only: no MatMulNBits fusion of quantized Linear weights, which computes
    # in its own lower precision, so an artifact's own semantics can be checked
    graph_as_written: bool = False
    profile_prefix: Path | None = None  # per-node profiling to files with this prefix (not for deployment)

    def to_dict(self) -> dict:
        """The settings a deployer copies into their own session, JSON-ready."""
        return {
            "provider": self.provider,
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "session.disable_quant_qdq": "1" if self.disable_quant_qdq else "0",
            "intra_op_num_threads": self.intra_op_threads,
        }


def ort_session(model: str | Path | bytes, options: SessionOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession for ``model`` (path or serialized bytes) with ``options``."""
    options = options or SessionOptions()
    settings = ort.SessionOptions()
    settings.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if options.graph_as_written
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    settings.log_severity_level = 3  # the QDQ transformers warn about every unfused node
    if options.intra_op_threads:
        settings.intra_op_num_threads = options.intra_op_threads
    if options.disable_quant_qdq:
        settings.add_session_config_entry("session.disable_quant_qdq", "1")
    if options.optimized_model_path is not None:
        settings.optimized_model_filepath = str(options.optimized_model_path)
    if options.profile_prefix is not None:
        settings.enable_profiling = True
        settings.profile_file_prefix = str(options.profile_prefix)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        source,
        sess_options=settings,
        providers=[options.provider],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


def with_outputs(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``tensors`` (float), to read intermediate values."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in sorted(set(tensors) - existing):
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return probe


def profiled_node_times(session: ort.InferenceSession, *, runs: int) -> dict[str, float]:
    """Milliseconds per run of each node over a profiling session's last ``runs`` runs (the ones
    before are warm-up); ends the session's profiling and removes its trace file.

    A fused node (QDQ groups become QLinearConv) is named after the node it replaced plus a
    ``_token_<n>`` suffix, which is dropped so that times key by the ONNX node name. Each node's
    time is its median over the runs: a burst of other load during a few runs (a mean took it in:
    a YOLOv10s profile once priced INT8 convs at 23 ms, against 14.5-14.8 ms in quiet runs) does not
    reorder what the search tries first."""
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    durations: dict[str, list[float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations.setdefault(name, []).append(event["dur"] / 1000.0)
    times: dict[str, float] = {}
    for name, values in durations.items():
        node = re.sub(r"_token_\d+$", "", name.removesuffix("_kernel_time"))
        times[node] = times.get(node, 0.0) + statistics.median(values[-runs:])
    return times
