"""``size``: INT4 weight-only artifacts, for storage and download size rather than speed.

No mainstream runtime runs INT4-weight convolutions fast: ONNX Runtime disables its QDQ conv
fusion for 4-bit weights and OpenVINO fails to compile these graphs (measured on the testbed).
ONNX Runtime loads them; with ``session.disable_quant_qdq`` it constant-folds the weight
DequantizeLinear nodes once at load time instead of dequantizing on every run, so the model runs
as fast as FP32 while the file stays small. That is how this target times its artifacts.
"""

from __future__ import annotations

from pathlib import Path

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.onnx_graph.ort_sessions import SessionOptions
from quantsweep.onnx_graph.placement import Placement
from quantsweep.targets.base import Availability, Backend, ConvKind, Objective, Runner
from quantsweep.targets.ort_cpu import ORT_CPU_FLOAT_RUN, OrtRunner, scoring_runner

INT4_WEIGHT_ONLY = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)


class SizeBackend(Backend):
    """INT4 (or INT8) weights, float activations; loaded by ONNX Runtime with Q/DQ folded at load."""

    name = "size"
    runtime = "onnxruntime"
    objective = Objective.SIZE
    description = "smallest file: INT4 weight-only (ONNX Runtime loads it; no runtime runs INT4 convs fast)"
    placement = Placement()

    def sweep_formats(self) -> tuple[QuantFormat, ...]:
        return (INT4_WEIGHT_ONLY,)

    def fast_precisions(self, kind: ConvKind) -> frozenset[str]:
        # storage formats this target writes; none of them is executed in low precision
        return frozenset({"int4-fp16", "int8-fp16"})

    def availability(self) -> Availability:
        return Availability(True)

    def session_options(self) -> SessionOptions:
        """Q/DQ folded into float weights at load time (measured faster than dequantizing per run)."""
        return SessionOptions(disable_quant_qdq=True)

    def float_run_key(self) -> str:
        # ONNX Runtime's CPU EP at its defaults; the size target's disable_quant_qdq only touches Q/DQ
        return ORT_CPU_FLOAT_RUN

    def load(self, path: Path) -> Runner:
        return OrtRunner(path, self.session_options())

    def load_for_scoring(self, path: Path) -> Runner:
        return scoring_runner(path, self.session_options())

    def deploy_hint(self, path: Path) -> str:
        return (
            f"onnxruntime.InferenceSession('{path.name}', sess_options) with "
            "sess_options.add_session_config_entry('session.disable_quant_qdq', '1')"
        )
