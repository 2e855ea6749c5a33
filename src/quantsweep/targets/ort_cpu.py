"""``ort-cpu``: INT8 W8A8 in the placement ONNX Runtime's CPU provider fuses into QLinearConv.

ONNX Runtime fuses ``DQ(x) + DQ(w) + DQ(bias int32) -> Conv -> Q`` into one QLinearConv only
when the conv's output goes to that Q alone; with Q/DQ on the inputs only, every conv runs in
float after dequantizing its weight on every run (slower than FP32). So each planned conv gets:
its input through the tensor's shared QuantizeLinear (UINT8, asymmetric: SiLU outputs are mostly
positive and keep twice the resolution), INT8 per-output-channel weights, an INT32 bias and a
QuantizeLinear on its output, whose dequantized copy every reader takes. Graph outputs and the
decode tail stay float.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import onnx

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.core.hardware import portable_int8_weights, usable_cores
from quantsweep.models.ultralytics_adapter import ONNX_INT8
from quantsweep.onnx_graph.inspect import node_precisions
from quantsweep.onnx_graph.ort_sessions import (
    SessionOptions,
    ort_session,
    profiled_node_times,
    with_outputs,
)
from quantsweep.onnx_graph.placement import Placement
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets.base import (
    Availability,
    Backend,
    BaselineWriter,
    ConvKind,
    Objective,
    Runner,
    onnx_source,
)
from quantsweep.targets.ultralytics_baseline import ULTRALYTICS_INT8, write_ultralytics_int8

ORT_CPU_FLOAT_RUN = "onnxruntime-cpu"  # how ort-cpu and size run a float graph: the same way

W8A8 = QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL)
# both weight types run in the integer kernels; which one the CPU targets write by default: cpu_w8a8
CPU_INT8_WEIGHTS = (WeightDtype.INT8, WeightDtype.INT7)


def cpu_w8a8() -> QuantFormat:
    """W8A8 per channel as every CPU of this architecture executes it exactly (``hardware``):
    7-bit weight codes on x86, where CPUs without VNNI saturate UINT8 x INT8 products, whichever
    CPU builds the artifact; full INT8 elsewhere."""
    return QuantFormat(portable_int8_weights(), ActDtype.INT8, Granularity.PER_CHANNEL)


def cpu_weight_codes_note(artifact: Path) -> str | None:
    """What a CPU target's artifact needs of an x86 CPU, read from the weight codes its Q/DQ ONNX
    stores (``inspect.node_precisions``): 7-bit codes run exactly on any; full-range INT8 only with
    VNNI or AMX. None for a file that is not here or has no INT8 weights."""
    source = onnx_source(artifact)
    if not source.is_file():
        return None
    # convs kept float (islands) read dequantized tensors but store no codes: they do not count
    precisions = node_precisions(onnx.load(str(source))).values()
    weights = {w for w, act in precisions if act != "fp16" and w != "float"}
    if WeightDtype.INT8.value in weights:
        return (
            "full-range INT8 codes: exact on x86 CPUs with VNNI or AMX and on ARM; an x86 CPU without "
            "VNNI saturates them (measured losses: docs/targets.md): for such CPUs "
            "build without --weights int8"
        )
    if weights == {WeightDtype.INT7.value}:
        return "7-bit codes (-64..63): exact on every x86 CPU, with VNNI or without, and on ARM"
    return None


SCORING_STREAMS = 2  # runs at once when scoring (Backend.load_for_scoring)


class OrtRunner(Runner):
    """An ONNX Runtime session with the target's options; ``streams`` runs at once in ``run_all``."""

    def __init__(self, path: Path, options: SessionOptions, *, streams: int = 1) -> None:
        self.path, self.options, self.streams = Path(path), options, streams
        self.session = ort_session(path, options)
        self.input_name = self.session.get_inputs()[0].name
        self.device = options.provider

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: image})[0]

    def run_all(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.streams == 1:
            return super().run_all(images)
        # one session may run from several threads; each run releases the GIL
        with ThreadPoolExecutor(self.streams) as pool:
            return list(pool.map(self, images))

    def input_size(self) -> tuple[int, int] | None:
        size = self.session.get_inputs()[0].shape[2:4]
        return tuple(size) if all(isinstance(d, int) for d in size) else None

    def float_precision(self) -> str:
        return "f32"

    def intermediates(self, image: np.ndarray, tensors: Sequence[str]) -> dict[str, np.ndarray]:
        """The tensors as extra graph outputs of a session with the same options (a tensor made a graph
        output can change which fusions apply around it; good enough to find where outputs depart)."""
        probe = with_outputs(onnx.load(str(self.path)), tensors)
        session = ort_session(probe.SerializeToString(), self.options)
        names = [o.name for o in session.get_outputs() if o.name in set(tensors)]
        return dict(zip(names, session.run(names, {self.input_name: image}), strict=True))

    def node_times(self, image: np.ndarray, *, runs: int = 20, warmup: int = 5) -> dict[str, float]:
        """ONNX Runtime's profiler on a session with the same options (``warmup`` runs first)."""
        with tempfile.TemporaryDirectory() as tmp:
            options = dataclasses.replace(self.options, profile_prefix=Path(tmp) / "profile")
            session = ort_session(self.path, options)
            for _ in range(warmup + runs):
                session.run(None, {self.input_name: image})
            return profiled_node_times(session, runs=runs)


def scoring_runner(path: Path, options: SessionOptions) -> OrtRunner:
    """A session with ``options`` for scoring: two runs at once, each on half the cores. On 2 cores
    6% (FP32) to 20% (INT8) more images per second than one run on both, with the same outputs
    (MLAS splits a conv's output among threads, not its sums; tests/targets/test_scoring_runners.py)."""
    threads = max(1, usable_cores() // SCORING_STREAMS)
    return OrtRunner(path, dataclasses.replace(options, intra_op_threads=threads), streams=SCORING_STREAMS)


class OrtCpuBackend(Backend):
    """ONNX Runtime, CPU execution provider, integer convolutions (QLinearConv)."""

    name = "ort-cpu"
    runtime = "onnxruntime"
    objective = Objective.SPEED
    description = "ONNX Runtime CPU: INT8 W8A8 fused into QLinearConv (UINT8 activations)"
    placement = Placement(asymmetric=True, output_q=True, int32_bias=True, fuse_silu=True, carry_codes=True)

    def sweep_formats(self) -> tuple[QuantFormat, ...]:
        return (cpu_w8a8(),)

    def fast_precisions(self, kind: ConvKind) -> frozenset[str]:
        if kind is ConvKind.LINEAR:
            return frozenset()
        acts = (ActDtype.INT8, ActDtype.UINT8)
        return frozenset(Precision(w, a).label for w in CPU_INT8_WEIGHTS for a in acts)

    def availability(self) -> Availability:
        return Availability(True)

    def session_options(self) -> SessionOptions:
        """What the artifacts are measured with (and a deployer should use)."""
        return SessionOptions()

    def baselines(self) -> dict[str, BaselineWriter]:
        """Ultralytics' ``format='onnx', int8=True`` export (ONNX Runtime ``quantize_static``)."""
        return {ULTRALYTICS_INT8: partial(write_ultralytics_int8, fmt=ONNX_INT8)}

    def float_run_key(self) -> str:
        # ONNX Runtime's CPU EP at its defaults; the size target's disable_quant_qdq only touches Q/DQ
        return ORT_CPU_FLOAT_RUN

    def load(self, path: Path) -> Runner:
        return OrtRunner(path, self.session_options())

    def load_for_scoring(self, path: Path) -> Runner:
        return scoring_runner(path, self.session_options())

    def weight_codes_note(self, artifact: Path) -> str | None:
        return cpu_weight_codes_note(artifact)

    def deploy_hint(self, path: Path) -> str:
        return (
            f"onnxruntime.InferenceSession('{path.name}', providers=['CPUExecutionProvider']) "
            "with graph_optimization_level=ORT_ENABLE_ALL (the default)"
        )
