"""``openvino``: INT8 W8A8 run by the OpenVINO runtime on CPU.

OpenVINO turns Q/DQ on a conv's input and weight into FakeQuantize and runs the conv in INT8; it
needs no Q on the output. Measured on the testbed (benchmarks/targets.py), the inputs-only
placement and ONNX Runtime's (with output Q and INT32 bias) compile to the same INT8 convs; the
inputs-only one is the default because it has fewer nodes and no requantization of conv outputs
before the float activation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from quantsweep.backends.base import Availability, Backend, ConvKind, Objective, Runner
from quantsweep.backends.ort_cpu import W8A8
from quantsweep.backends.placement import Placement
from quantsweep.config import QuantFormat

# Layers kept "in float" are kept to protect accuracy, so float means FP32 here: on CPUs with
# bf16 units OpenVINO would otherwise run every non-INT8 op in bf16 (benchmarks/targets.py also
# times the FP32 model with OpenVINO's default precision, so the bf16 figure is not hidden).
LATENCY_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoRunner(Runner):
    """A model compiled for the OpenVINO CPU plugin with the latency hint (batch 1)."""

    device = "CPU"

    def __init__(self, path: Path, *, config: dict[str, str] | None = None) -> None:
        import openvino as ov  # noqa: PLC0415 (optional runtime; imported when used)

        core = ov.Core()
        self.model = core.read_model(str(path))
        self.compiled = core.compile_model(self.model, "CPU", config or LATENCY_CONFIG)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer([image])[self.output])

    def input_size(self) -> tuple[int, int] | None:
        shape = self.model.input(0).get_partial_shape()
        if shape.is_static:
            return int(shape[2].get_length()), int(shape[3].get_length())
        return None

    def executed_precisions(self) -> dict[str, str]:
        """``{executed layer: runtime precision}`` of the compiled graph's convolutions."""
        result = {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) == "Convolution":
                result[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
        return result

    def inference_precision(self) -> str:
        """The float precision the plugin chose for non-quantized ops (bf16 on CPUs that have it)."""
        return str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))


class OpenVinoBackend(Backend):
    """OpenVINO runtime, CPU plugin, INT8 convolutions from Q/DQ on inputs and weights."""

    name = "openvino"
    runtime = "openvino"
    objective = Objective.SPEED
    description = "OpenVINO CPU: INT8 W8A8, Q/DQ on conv inputs and weights"
    placement = Placement()  # inputs and weights only; see the module docstring

    def sweep_formats(self) -> tuple[QuantFormat, ...]:
        return (W8A8,)

    def fast_precisions(self, kind: ConvKind) -> frozenset[str]:
        return frozenset({"int8-int8"})

    def availability(self) -> Availability:
        if importlib.util.find_spec("openvino") is None:
            return Availability(False, "the openvino package is not installed (pip install openvino)")
        return Availability(True)

    def load(self, path: Path) -> Runner:
        return OpenVinoRunner(path)

    def deploy_hint(self, path: Path) -> str:
        return f"benchmark_app -m {path.name} -d CPU -hint latency -infer_precision f32"
