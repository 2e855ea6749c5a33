"""``openvino``: INT8 W8A8 run by the OpenVINO runtime on CPU, shipped as OpenVINO IR.

OpenVINO turns Q/DQ on a conv's input and weight into FakeQuantize and runs the conv in INT8; it
needs no Q on the output. Activations are UINT8 with a zero point (the CPU plugin runs u8 x i8 and
subtracts the zero point's share), weights INT8 per output channel. Each tensor is quantized once,
where it is made (``onnx_graph.qdq_sharing``), so OpenVINO fuses the FakeQuantize into the op that
produces it and the conv writes UINT8 codes (docs/decisions.md, "one quantizer per tensor"). The
artifact is the IR (``.xml``/``.bin``) that ``ov.convert_model`` makes from the Q/DQ ONNX, not the
ONNX itself: compiled straight from the ``.onnx`` (``read_model`` or ``compile_model`` on the
file), OpenVINO 2026.4 ran a signed-INT8 Q/DQ conv that reads a Concat wrongly (0.2 relative error
on a 2-node graph, 0.95 on YOLOv10s class scores), while the converted IR runs it as ONNX Runtime
and Torch do (docs/decisions.md, "OpenVINO executes what it is given"). The conversion applies
OpenVINO's offline (MOC) transformations, which the direct path skips. Verification runs both
loading paths; only the IR is deployed.

Every figure runs at the runtime's default precision for float ops (bf16 on CPUs that have it):
that is how a user runs the FP32 model, so it is the honest reference; the runtime check against
Torch forces f32, which is what the Torch simulation computes.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from quantsweep.core.config import ActDtype, QuantFormat
from quantsweep.models.ultralytics_adapter import OPENVINO_INT8
from quantsweep.onnx_graph.placement import Placement
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets.base import (
    Availability,
    Backend,
    BaselineWriter,
    ConvKind,
    LoadPath,
    ModelSource,
    Objective,
    Runner,
    onnx_source,
)
from quantsweep.targets.ort_cpu import CPU_INT8_WEIGHTS, cpu_w8a8, cpu_weight_codes_note
from quantsweep.targets.ultralytics_baseline import ULTRALYTICS_INT8, write_ultralytics_int8


@contextmanager
def _conversion_telemetry_off() -> Iterator[None]:
    """``ov.convert_model`` sends no usage telemetry while quantsweep converts its artifacts.

    Unless the user ran ``opt_in_out --opt_out``, each conversion posts about five events to
    Google Analytics, each from a forked copy of this process: 0.7 s of CPU per conversion in a
    process holding 3 GB (docs/decisions.md, twenty-second session), and a run converts every
    artifact and search trial of the target.
    The user asked quantsweep for artifacts, not OpenVINO's converter for a session; their own
    OpenVINO use keeps its setting (the consent is put back after).
    """
    try:
        from openvino.tools.ovc.telemetry_utils import init_ovc_telemetry  # noqa: PLC0415

        telemetry = init_ovc_telemetry()  # the converter's own singleton, as it configures it
        before = telemetry.consent
    except Exception:  # any other OpenVINO layout: convert as it comes
        yield
        return
    telemetry.consent = False
    try:
        yield
    finally:
        telemetry.consent = before


DEPLOY_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}  # float ops at the runtime's default precision
EXACT_CONFIG = {**DEPLOY_CONFIG, "INFERENCE_PRECISION_HINT": "f32"}  # what Torch simulates
IR_SUFFIX = ".xml"


class OpenVinoRunner(Runner):
    """A model compiled for the OpenVINO CPU plugin with the latency hint (batch 1); it scores with
    this one too. Two streams scored 12-15% more images per second, but this OpenVINO (2026.4)
    deadlocks now and then when a multi-stream compiled model is destroyed from Python: a stream
    thread waits for the GIL that the destroying thread holds (docs/decisions.md, twentieth session)."""

    device = "CPU"

    def __init__(self, path: Path, *, config: dict[str, str] | None = None) -> None:
        import openvino as ov  # noqa: PLC0415 (imported when used)

        self.path, self.config = Path(path), dict(config or DEPLOY_CONFIG)
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.compiled = self.core.compile_model(self.model, "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer([image])[self.output])

    def input_size(self) -> tuple[int, int] | None:
        shape = self.model.input(0).get_partial_shape()
        if shape.is_static:
            return int(shape[2].get_length()), int(shape[3].get_length())
        return None

    def float_precision(self) -> str:
        """The precision the plugin chose for non-quantized ops (bf16 on CPUs that have it)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def intermediates(self, image: np.ndarray, tensors: Sequence[str]) -> dict[str, np.ndarray]:
        model = self.core.read_model(str(self.path))
        known = {name for op in model.get_ops() for out in op.outputs() for name in out.get_names()}
        wanted = [t for t in tensors if t in known]
        if wanted:
            model.add_outputs(wanted)
        compiled = self.core.compile_model(model, "CPU", self.config)
        values = compiled.create_infer_request().infer([image])
        found = {}
        for port in compiled.outputs:
            for name in port.get_names() & set(wanted):
                found[name] = np.array(values[port])
        return found

    def node_times(self, image: np.ndarray, *, runs: int = 20, warmup: int = 5) -> dict[str, float]:
        """The CPU plugin's performance counters, compiled with the same config (fused eltwise
        subgraphs and activations are charged to the node they were fused into); each node's
        median over the runs, as ONNX Runtime's profile (``profiled_node_times``)."""
        compiled = self.core.compile_model(self.model, "CPU", {**self.config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        for _ in range(warmup):
            request.infer([image])
        samples: dict[str, list[float]] = {}
        for _ in range(runs):
            request.infer([image])
            for counter in request.profiling_info:
                if counter.status.name == "EXECUTED":
                    samples.setdefault(counter.node_name, []).append(counter.real_time.total_seconds() * 1e3)
        return {node: statistics.median(ms) for node, ms in samples.items()}

    def executed_precisions(self) -> dict[str, str]:
        """``{executed layer: runtime precision}`` of the compiled graph's convolutions."""
        result = {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) == "Convolution":
                result[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
        return result


class OpenVinoBackend(Backend):
    """OpenVINO runtime, CPU plugin, INT8 convolutions from Q/DQ on inputs and weights."""

    name = "openvino"
    runtime = "openvino"
    objective = Objective.SPEED
    description = "OpenVINO CPU: INT8 W8A8, one Q/DQ per tensor and on weights, shipped as IR"
    # UINT8 asymmetric conv inputs (as ort-cpu: SiLU outputs are mostly positive, so a zero point
    # keeps twice the resolution; YOLOv10s k0 0.7568 against 0.7431 signed, at the same speed) and
    # INT8 weights; Concat inputs that are quantized next carry the codes (docs/decisions.md)
    placement = Placement(asymmetric=True, carry_codes=True, share_quantizers=True)
    fuses_island_borders = True

    def sweep_formats(self) -> tuple[QuantFormat, ...]:
        return (cpu_w8a8(),)

    def fast_precisions(self, kind: ConvKind) -> frozenset[str]:
        return frozenset(Precision(w, ActDtype.INT8).label for w in CPU_INT8_WEIGHTS)

    def availability(self) -> Availability:
        if importlib.util.find_spec("openvino") is None:
            return Availability(False, "the openvino package is not installed (pip install openvino)")
        return Availability(True)

    def save(self, model: onnx.ModelProto, path: Path, *, source: ModelSource | None = None) -> Path:
        """The Q/DQ ONNX at ``path`` and, beside it, the IR ``ov.convert_model`` makes of it."""
        import openvino as ov  # noqa: PLC0415

        onnx.save(model, str(path))
        ir = path.with_suffix(IR_SUFFIX)
        with _conversion_telemetry_off():
            ov.save_model(ov.convert_model(str(path)), str(ir), compress_to_fp16=False)
        return ir

    def artifact_bytes(self, artifact: Path) -> int:
        artifact = Path(artifact)
        if artifact.suffix != IR_SUFFIX:
            return artifact.stat().st_size
        return artifact.stat().st_size + artifact.with_suffix(".bin").stat().st_size

    def load(self, path: Path) -> Runner:
        return OpenVinoRunner(path)

    def verification_loads(self, artifact: Path) -> dict[str, LoadPath]:
        loads = {"ir": LoadPath(lambda: OpenVinoRunner(artifact, config=EXACT_CONFIG), deployed=True)}
        source = onnx_source(artifact)
        if Path(artifact).suffix == IR_SUFFIX and source.is_file():
            loads["onnx_direct"] = LoadPath(
                lambda: OpenVinoRunner(source, config=EXACT_CONFIG),
                deployed=False,
                note=f"compile_model('{source.name}') straight from the ONNX; not the deployed path",
            )
        return loads

    def baselines(self) -> dict[str, BaselineWriter]:
        """Ultralytics' ``format='openvino', int8=True`` export (NNCF), as IR."""
        return {ULTRALYTICS_INT8: _ultralytics_openvino}

    def weight_codes_note(self, artifact: Path) -> str | None:
        return cpu_weight_codes_note(artifact)

    def deploy_hint(self, path: Path) -> str:
        line = (
            f"core.compile_model('{path.name}', 'CPU', {{'PERFORMANCE_HINT': 'LATENCY'}}) "
            f"(or benchmark_app -m {path.name} -d CPU -hint latency)"
        )
        # Only a Q/DQ graph runs differently straight from the ONNX (decisions.md, issue 16); the
        # FP32 model has none, and ships as the ONNX it was timed as.
        return line + "; load the IR, not the .onnx" if Path(path).suffix == IR_SUFFIX else line


def _ultralytics_openvino(inputs: ModelSource, path: Path) -> Path:
    """Ultralytics' export (NNCF, then the converter), with no telemetry sent while quantsweep runs it."""
    with _conversion_telemetry_off():
        return write_ultralytics_int8(inputs, path, fmt=OPENVINO_INT8)
