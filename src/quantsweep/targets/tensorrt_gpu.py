"""``tensorrt``: INT8 and FP8 engines that TensorRT builds from the Q/DQ ONNX, run on an NVIDIA GPU.

Placement, from TensorRT's explicit-quantization rules: Q/DQ on the input and the weight of each
quantized conv, signed and symmetric (zero point 0; TensorRT rejects UINT8), weights per output
channel, no Q on the output (optional for TensorRT, which fuses the following Q/DQ itself).
Tensors a residual Add also reads are quantized where they are made (as the Torch simulation
does, ``quant.producer_quant``; TensorRT's guide quantizes residual inputs too), and the codes are
carried through Split/Slice/MaxPool and Concat with explicit Q/DQ (exact): without them ONNX
Runtime's QDQ propagation, which the verify pass runs, writes an invalid QuantizeLinear after a
Slice of a signed INT8 tensor.

FP8 (E4M3 weights and activations) convolutions exist on Hopper from TensorRT 10.2, but TensorRT
has no optimized FP8 kernels for grouped or depthwise convs (YOLOv10's SCDown and C2fCIB) nor for
the 3-channel first conv, so :meth:`TensorRtBackend.adapt_plan` writes those nodes at INT8 when a
scheme asks for FP8, and :meth:`TensorRtBackend.check_plan` refuses FP8 on them.

NOT MEASURED: the engine building and the runner below have never run in this project (no GPU was
lent to the session that wrote them). They follow TensorRT's Python API (10.x; the weakly typed
builder flags are gone in 11.x, where every network is strongly typed) and are kept small so that
the first run on a GPU (``benchmarks/gpu.py``) checks them. Only the artifacts are tested here.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from quantsweep.core.config import ActDtype, QuantFormat, WeightDtype
from quantsweep.onnx_graph.inspect import node_precisions
from quantsweep.onnx_graph.placement import Placement
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets.base import Availability, Backend, ConvKind, Objective, Runner
from quantsweep.targets.ort_cpu import W8A8

LOG = logging.getLogger(__name__)
INT8_LABEL = "int8-int8"
INT7_LABEL = "int7-int8"
FP8_LABEL = "fp8-fp8"
# node kinds with fast FP8 kernels (GEMMs have them too; a YOLO has none)
FP8_KINDS = frozenset({ConvKind.REGULAR, ConvKind.LINEAR})
WORKSPACE_BYTES = 2 << 30
NO_PACKAGE = "the tensorrt package is not installed (pip install quantsweep[tensorrt])"
NO_GPU = "no CUDA GPU on this machine (torch.cuda.is_available() is false)"


def tensorrt_availability() -> Availability:
    """Available with a CUDA GPU visible to torch (it holds the I/O buffers) and ``tensorrt`` importable."""
    if not torch.cuda.is_available():
        return Availability(False, NO_GPU)
    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, NO_PACKAGE)
    return Availability(True)


@dataclass(frozen=True)
class EngineSettings:
    """How an engine was built: strongly typed (every tensor's type from the ONNX) or with flags.

    ``float16``: let TensorRT run the unquantized layers in FP16. That takes the weakly typed
    builder with the FP16 flag (TensorRT 10.x); a strongly typed network (needed for FP8, and the
    only kind in 11.x) runs them at the ONNX's own type, FP32 for quantsweep's artifacts, unless
    the ONNX is converted to FP16 first (ModelOpt's AutoCast does that).
    """

    strongly_typed: bool
    float16: bool


def engine_settings(model: onnx.ModelProto, *, float16: bool = True) -> EngineSettings:
    """Strongly typed when the model has FP8 Q/DQ (as TensorRT requires for FP8 convs) or when the
    installed TensorRT has no precision flags; weakly typed with FP16 (and INT8) flags otherwise."""
    import tensorrt as trt  # noqa: PLC0415 (optional runtime; needs a GPU)

    has_fp8 = any("fp8" in pair for pair in node_precisions(model).values())
    flags_exist = hasattr(trt.BuilderFlag, "FP16")
    strongly = has_fp8 or not flags_exist
    return EngineSettings(strongly_typed=strongly, float16=float16 and not strongly)


def build_engine(path: Path, *, float16: bool = True) -> tuple[bytes, EngineSettings]:
    """A serialized TensorRT engine of the ONNX at ``path`` (explicit quantization from its Q/DQ)."""
    import tensorrt as trt  # noqa: PLC0415

    settings = engine_settings(onnx.load(str(path), load_external_data=False), float16=float16)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if not settings.strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)  # permits the INT8 kernels the Q/DQ ask for
        if settings.float16:
            config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine of {path.name} (see its log above)")
    return bytes(serialized), settings


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt  # noqa: PLC0415

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }
    return table[trt_dtype]


class TensorRtRunner(Runner):
    """A deserialized engine with torch CUDA tensors as its I/O buffers (batch 1, static shapes).

    ``__call__`` copies the image in, enqueues the engine and copies the first output back, and
    waits for the stream, so wall-clock timing (``interleaved_latency``) measures whole calls
    including both copies. The issue asked for CUDA events: each call also records events around
    the engine alone, and :attr:`last_gpu_ms` is that GPU time of the latest call.
    """

    device = "cuda"

    def __init__(self, engine: bytes, settings: EngineSettings) -> None:
        import tensorrt as trt  # noqa: PLC0415

        self.settings = settings
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(engine)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input = next(n for n in names if is_input[n])
        self.output = next(n for n in names if not is_input[n])
        self.buffers = {}
        for name in names:
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = _torch_dtype(self.engine.get_tensor_dtype(name))
            self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.stream = torch.cuda.Stream()  # not the default stream: enqueueV3 syncs on that one
        self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self.last_gpu_ms: float | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        start, end = self.events
        with torch.cuda.stream(self.stream):
            self.buffers[self.input].copy_(torch.from_numpy(image))
            start.record(self.stream)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the engine")
            end.record(self.stream)
            output = self.buffers[self.output].float().cpu()
        self.stream.synchronize()
        self.last_gpu_ms = start.elapsed_time(end)
        return output.numpy()

    def input_size(self) -> tuple[int, int] | None:
        shape = tuple(self.buffers[self.input].shape)
        return (int(shape[2]), int(shape[3])) if len(shape) == 4 else None


def load_engine(path: Path, *, float16: bool = True) -> TensorRtRunner:
    """Build the engine of ``path`` and load it; ``float16`` as in :class:`EngineSettings`.

    The FP32 model loaded this way is the FP16 reference engine the target compares against (on
    TensorRT 10.x, where the FP16 flag exists; see :class:`EngineSettings`).
    """
    engine, settings = build_engine(path, float16=float16)
    LOG.info("built %s (%s)", path.name, settings)
    return TensorRtRunner(engine, settings)


class TensorRtBackend(Backend):
    """TensorRT on an NVIDIA GPU: INT8, or FP8 on regular convs with INT8 on the others."""

    name = "tensorrt"
    runtime = "tensorrt"
    objective = Objective.SPEED
    description = "TensorRT GPU: INT8 or FP8 (FP8 on regular convs only), Q/DQ on inputs and weights"
    placement = Placement(carry_codes=True)  # signed, symmetric; see the module docstring

    def sweep_formats(self) -> tuple[QuantFormat, ...]:
        """INT8 W8A8 per channel; FP8 schemes come from a sweep with ``--weights fp8 --acts fp8``."""
        return (W8A8,)

    def fast_precisions(self, kind: ConvKind) -> frozenset[str]:
        # 7-bit codes (a sweep made on a CPU whose INT8 products saturate) are INT8 to TensorRT
        int8 = frozenset({INT8_LABEL, INT7_LABEL})
        return int8 | {FP8_LABEL} if kind in FP8_KINDS else int8

    def adapt_plan(
        self, plan: Mapping[str, Precision], kinds: Mapping[str, ConvKind]
    ) -> dict[str, Precision]:
        """FP8 nodes of a kind without FP8 kernels (first, grouped, depthwise) are written at INT8."""
        adapted = super().adapt_plan(plan, kinds)
        for node, precision in adapted.items():
            if precision.label == FP8_LABEL and kinds.get(node, ConvKind.REGULAR) not in FP8_KINDS:
                adapted[node] = Precision(WeightDtype.INT8, ActDtype.INT8, precision.granularity)
        return adapted

    def availability(self) -> Availability:
        return tensorrt_availability()

    def load(self, path: Path) -> Runner:
        return load_engine(path)

    def deploy_hint(self, path: Path) -> str:
        return (
            f"trtexec --onnx={path.name} --int8 --fp16 (INT8 artifacts, TensorRT 10.x) or "
            f"--stronglyTyped (FP8 artifacts; TensorRT >= 10.2 on Hopper or newer)"
        )
