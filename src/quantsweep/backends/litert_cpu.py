"""``litert``: LiteRT (TFLite) on CPU through XNNPACK, INT8 per op from the plan, shipped as ``.tflite``.

The chain is Google's, the one Ultralytics' ``format='litert'`` export uses: ``litert-torch``
converts the Torch model to a float ``.tflite`` (NCHW float input, the FP32 ONNX's output), and
``ai-edge-quantizer`` rewrites it with static INT8 (per-channel symmetric INT8 weights, asymmetric
INT8 activations, INT32 bias) op by op, following a recipe of regexes on each op's scope (its
output tensor names). The plan decides the recipe:

- every conv the plan quantizes is INT8, and so is every op upstream of one (SiLU, Add, Concat,
  MaxPool, Resize, ...): XNNPACK then runs the backbone on INT8 tensors end to end;
- a conv the plan keeps float stays float, with the QUANTIZE/DEQUANTIZE the quantizer puts around it;
- ops downstream of every quantized conv stay float: the head's box decoding works on pixel
  coordinates (a 320 px image in INT8 steps of 1.5 px cost the testbed 0.17 mAP50-95 in
  Ultralytics' all-INT8 export), and graph input and output stay float.

Plan nodes are matched to TFLite ops by their weights (the FP32 ONNX's conv weight, transposed to
TFLite's layout, equals exactly one op's filter; names are not reliable: litert-torch drops the
names of modules that are iterated rather than called). Activation ranges are the global min/max
over the calibration images, each image calibrated alone (``Quantizer.calibrate`` over many
images blends them with a moving average, which depends on their order). The weights are the
run's quantizer's (GPTQ by default): ai-edge-quantizer rounds float filters itself, so its codes,
scales and biases are replaced afterwards by the ones the Q/DQ ONNX stores. That Q/DQ ONNX, beside
the ``.tflite``, is written in ``ort-cpu``'s placement (the same integer arithmetic: asymmetric
8-bit activations, quantized conv outputs, INT32 bias) and is what the Torch simulation is checked
against; the ``.tflite`` itself is checked against the same Torch output on LiteRT.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantsweep.backends.base import (
    Availability,
    Backend,
    BaselineWriter,
    ConvKind,
    ModelSource,
    Objective,
    Runner,
)
from quantsweep.backends.ort_cpu import OrtCpuBackend
from quantsweep.backends.sessions import SessionOptions, ort_session
from quantsweep.backends.ultralytics_baseline import ULTRALYTICS_INT8, write_ultralytics_int8
from quantsweep.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.errors import InputError
from quantsweep.export.inspect import dequantized_inputs, node_precisions, weight_codes
from quantsweep.models.ultralytics_adapter import UltralyticsExport, load_model
from quantsweep.schemes.records import Precision

LOG = logging.getLogger(__name__)
SUFFIX = ".tflite"
W8A8 = QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL)  # XNNPACK QS8: no saturation
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_NEEDS = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert")
FLOAT_AGREEMENT = 1e-4  # the converted float model against the FP32 ONNX in ONNX Runtime
# Ultralytics' all-INT8 LiteRT export (box decoding in INT8, graph input/output float)
LITERT_INT8 = UltralyticsExport("litert", 8, needs="litert_torch")


def threads() -> int:
    """XNNPACK threads: one per core this process may use (recorded in every deploy line)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LiteRtRunner(Runner):
    """A ``.tflite`` in ai-edge-litert's Interpreter (XNNPACK applied by default on CPU)."""

    device = "cpu"

    def __init__(self, path: Path, *, num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 (optional extra)

        self.path, self.num_threads = Path(path), num_threads or threads()
        self.interpreter = Interpreter(model_path=str(path), num_threads=self.num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.box_scale = _ultralytics_box_scale(self.path)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(image, dtype=np.float32))
        self.interpreter.invoke()
        output = np.array(self.interpreter.get_tensor(self.output["index"]))
        if self.box_scale is not None:  # back to pixels, as every other model of the run
            output[:, :4] *= self.box_scale
        return output

    def input_size(self) -> tuple[int, int] | None:
        shape = [int(d) for d in self.input["shape"]]
        return (shape[2], shape[3]) if len(shape) == 4 and shape[1] == 3 else None

    def float_precision(self) -> str:
        return "f32"  # XNNPACK's float kernels on x86 (no fp16 inference unless asked for)


def _ultralytics_box_scale(path: Path) -> np.ndarray | None:
    """``[w, h, w, h]`` for an Ultralytics detect export, whose boxes are divided by the input size
    (its ``_NormalizeCoords``, for per-tensor INT8 outputs); None for every other ``.tflite``. The
    export says what it is in the ``metadata.json`` it appends to the file as a zip."""
    with contextlib.suppress(zipfile.BadZipFile, KeyError, ValueError, OSError):
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("metadata.json"))
        if meta.get("author") == "Ultralytics" and meta.get("task") == "detect" and not meta.get("end2end"):
            height, width = meta["imgsz"]
            return np.array([width, height, width, height], dtype=np.float32)[None, :, None]
    return None


def _tflite_model(path: Path):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils  # noqa: PLC0415

    return tfl_flatbuffer_utils, tfl_flatbuffer_utils.read_model(str(path))


def op_kind(model, index: int) -> str:
    """The builtin op name (``CONV_2D``, ...) of op ``index`` of the first subgraph; ``builtin<code>``
    for an op ai-edge-quantizer has no name for."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils  # noqa: PLC0415

    code = model.operatorCodes[model.subgraphs[0].operators[index].opcodeIndex].builtinCode
    name = tfl_flatbuffer_utils.TFL_OP_CODE_TO_NAME.get(code, f"builtin{code}")
    return str(getattr(name, "value", name))


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _conv_digests(fp32: onnx.ModelProto) -> dict[str, set[str]]:
    """ONNX conv node -> digests of its weight in TFLite's layouts (OHWI; 1HWO for depthwise)."""
    inits = {i.name: i for i in fp32.graph.initializer}
    found = {}
    for node in fp32.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]])
            found[node.name] = {_digest(weight.transpose(0, 2, 3, 1)), _digest(weight.transpose(1, 2, 3, 0))}
    return found


class _FloatGraph:
    """The float ``.tflite``'s ops: scope, producers, and which op each ONNX conv became."""

    def __init__(self, path: Path, fp32: onnx.ModelProto) -> None:
        utils, model = _tflite_model(path)
        graph = model.subgraphs[0]
        self.scopes: list[str] = []
        self.depthwise: dict[int, bool] = {}  # conv op -> DEPTHWISE_CONV_2D (filter 1HWO, else OHWI)
        inputs: list[list[int]] = []
        producer: dict[int, int] = {}
        by_digest: dict[str, list[int]] = {}
        for index, op in enumerate(graph.operators):
            self.scopes.append(utils.get_op_scope(op, graph.tensors))
            inputs.append([int(t) for t in op.inputs if t >= 0])
            for out in op.outputs:
                producer[int(out)] = index
            if op_kind(model, index) in _CONV_OPS:
                self.depthwise[index] = op_kind(model, index) == "DEPTHWISE_CONV_2D"
                data = utils.get_tensor_data(graph.tensors[op.inputs[1]], model.buffers)
                if data is not None:
                    by_digest.setdefault(_digest(np.asarray(data)), []).append(index)
        # producers[i]: the ops whose outputs op i reads
        self.producers = [[producer[t] for t in ins if t in producer] for ins in inputs]
        self.conv_op: dict[str, int] = {}
        for node, digests in _conv_digests(fp32).items():
            ops = sorted({i for d in digests for i in by_digest.get(d, [])})
            if len(ops) == 1:
                self.conv_op[node] = ops[0]

    def upstream(self, ops: set[int]) -> set[int]:
        """``ops`` and every op whose output reaches one of them."""
        seen, stack = set(ops), list(ops)
        while stack:
            for before in self.producers[stack.pop()]:
                if before not in seen:
                    seen.add(before)
                    stack.append(before)
        return seen


def float_ops(graph: _FloatGraph, plan: Mapping[str, bool]) -> list[int]:
    """TFLite ops kept float for ``plan`` (ONNX conv node -> quantized): every op that reaches no
    quantized conv, and the convs the plan keeps float. A quantized node without its op is refused."""
    missing = [node for node, quantized in plan.items() if quantized and node not in graph.conv_op]
    if missing:
        raise InputError(
            f"litert: no TFLite op carries the weight of {missing[0]} (and {len(missing) - 1} more)"
        )
    quantized = {graph.conv_op[node] for node, q in plan.items() if q}
    kept = {graph.conv_op[node] for node, q in plan.items() if not q and node in graph.conv_op}
    int8 = graph.upstream(quantized) - kept
    return [i for i in range(len(graph.scopes)) if i not in int8]


def _quiet():
    """ai-edge-quantizer draws tqdm bars, litert-torch logs its steps, the interpreter warns on each image."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))  # litert-torch's step log
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


_CALIBRATIONS: dict[tuple[str, str], dict] = {}  # (float model, images digest) -> ranges


def _calibration(float_path: str, images: tuple[np.ndarray, ...]) -> dict:
    """Global min/max of every tensor over the images, each calibrated alone (order-independent);
    once per float model and set of images in a process."""
    from ai_edge_quantizer import quantizer, recipe  # noqa: PLC0415

    key = (float_path, hashlib.sha256(b"".join(a.tobytes() for a in images)).hexdigest())
    if key in _CALIBRATIONS:
        return _CALIBRATIONS[key]
    calibrator = quantizer.Quantizer(float_path)
    calibrator.load_quantization_recipe(recipe.static_wi8_ai8())
    signature, name = _signature(Path(float_path))
    merged: dict = {}
    with _quiet():
        for image in images:
            result = calibrator.calibrate({signature: [{name: image}]}, num_threads=threads())
            for tensor, value in result.items():
                if tensor not in merged:
                    merged[tensor] = dict(value)
                elif value:
                    merged[tensor]["min"] = np.minimum(merged[tensor]["min"], value["min"])
                    merged[tensor]["max"] = np.maximum(merged[tensor]["max"], value["max"])
    _CALIBRATIONS[key] = merged
    return merged


def _signature(path: Path) -> tuple[str, str]:
    """The model's signature key and its one input's name (``serving_default``, ``args_0``)."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    (key, spec), *_ = Interpreter(model_path=str(path)).get_signature_list().items()
    return key, spec["inputs"][0]


def _set_buffer(tflite, tensor: int, value: np.ndarray) -> None:
    """Overwrite the constant ``tensor`` of the first subgraph with ``value``'s bytes (same shape)."""
    shape = tuple(int(d) for d in tflite.subgraphs[0].tensors[tensor].shape)
    if shape != value.shape:
        raise InputError(f"litert: a {value.shape} constant where the .tflite has {shape}")
    buffer = tflite.buffers[tflite.subgraphs[0].tensors[tensor].buffer]
    buffer.data = np.frombuffer(np.ascontiguousarray(value).tobytes(), dtype=np.uint8)
    buffer.offset, buffer.size = 0, 0


def _carry_conv(tflite, op, *, codes: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, order) -> bool:
    """One INT8 conv of the quantized ``tflite`` given the plan's codes, scales and bias."""
    tensors = tflite.subgraphs[0].tensors
    weight = tensors[op.inputs[1]]
    if weight.quantization is None or len(weight.quantization.scale) != len(scale):
        return False
    _set_buffer(tflite, op.inputs[1], codes.transpose(order).astype(np.int8))
    weight.quantization.scale = scale.astype(np.float32).tolist()
    if bias is not None and len(op.inputs) > 2 and op.inputs[2] >= 0:
        bias_scale = float(tensors[op.inputs[0]].quantization.scale[0]) * scale.astype(np.float64)
        _set_buffer(tflite, op.inputs[2], np.round(bias / bias_scale).astype(np.int32))
        tensors[op.inputs[2]].quantization.scale = bias_scale.astype(np.float32).tolist()
    return True


def carry_plan_codes(path: Path, graph: _FloatGraph, model: onnx.ModelProto, nodes) -> int:
    """Put the run's quantizer's weight codes and scales (GPTQ by default) and its corrected biases,
    as the Q/DQ ``model`` stores them, into the quantized ``.tflite`` at ``path`` for the conv
    ``nodes``; return how many convs took them.

    ai-edge-quantizer rounds float filters itself (per channel, ``max|w| / 127``), which is neither
    the run's grid nor its rounding. Symmetric INT8 codes are TFLite's filter format, so they are
    written as they are; the bias is requantized to the op's own input scale times the weight scale."""
    from ai_edge_litert.tools import flatbuffer_utils  # noqa: PLC0415
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as utils  # noqa: PLC0415

    tflite = flatbuffer_utils.read_model(str(path))
    graph_ops = tflite.subgraphs[0].operators
    by_scope = {utils.get_op_scope(op, tflite.subgraphs[0].tensors): op for op in graph_ops}
    carried = 0
    for node in nodes:
        stored = weight_codes(model, node)
        op = by_scope.get(graph.scopes[graph.conv_op[node]])
        if stored is None or op is None or stored[0].dtype != np.int8 or np.any(stored[2] != 0):
            continue  # symmetric INT8 only: TFLite's filter format
        order = (1, 2, 3, 0) if graph.depthwise[graph.conv_op[node]] else (0, 2, 3, 1)  # OIHW -> OHWI / 1HWO
        bias = dequantized_inputs(model, node).get(2)
        carried += _carry_conv(tflite, op, codes=stored[0], scale=stored[1], bias=bias, order=order)
    flatbuffer_utils.write_model(tflite, str(path))
    return carried


def quantize_tflite(
    float_path: Path,
    out: Path,
    *,
    float_scopes: list[str],
    images: torch.Tensor,
    ranges_of: Path | None = None,
) -> Path:
    """Static INT8 of ``float_path`` with the ops of ``float_scopes`` float, calibrated on ``images``
    through ``ranges_of`` (a float model with the same tensors; default ``float_path`` itself): every
    artifact of a run uses the float model's ranges, as the Torch simulation does."""
    from ai_edge_quantizer import qtyping, quantizer, recipe  # noqa: PLC0415

    arrays = tuple(images[i : i + 1].numpy().astype(np.float32) for i in range(len(images)))
    ranges = _calibration(str(float_path), arrays)
    writer = quantizer.Quantizer(str(float_path))
    writer.load_quantization_recipe(recipe.static_wi8_ai8())
    no_quantize = recipe.AlgorithmName.NO_QUANTIZE
    for graph_end in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        writer.update_quantization_recipe(regex=".*", operation_name=graph_end, algorithm_key=no_quantize)
    for scope in float_scopes:  # added last: the recipe's last matching entry wins
        writer.update_quantization_recipe(
            regex="^" + re.escape(scope) + "$",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=no_quantize,
        )
    with _quiet():
        writer.quantize(calibration_result=ranges, enable_progress_report=False).export_model(
            str(out), overwrite=True
        )
    return out


def float_tflite(source: ModelSource) -> Path:
    """The float ``.tflite`` of the run's model, beside its FP32 ONNX (same stem), made once and
    checked against the FP32 ONNX in ONNX Runtime on two calibration images."""
    path = Path(source.fp32_path).with_suffix(SUFFIX)
    if path.is_file():
        return path
    import litert_torch  # noqa: PLC0415

    network = load_model(source.model, head=source.head).network
    head = network.blocks[-1]
    head.export = True  # one output tensor, as the FP32 ONNX was exported
    sample = torch.zeros(1, 3, source.imgsz, source.imgsz)
    partial_path = path.with_suffix(".partial" + SUFFIX)
    with _quiet(), torch.no_grad():
        litert_torch.convert(network.module.eval(), (sample,)).export(str(partial_path))
    os.replace(partial_path, path)
    images = source.images[:2].numpy().astype(np.float32)
    session = ort_session(Path(source.fp32_path), SessionOptions())
    name = session.get_inputs()[0].name
    runner = LiteRtRunner(path)
    for image in images:
        want = session.run(None, {name: image[None]})[0]
        got = runner(image[None])
        error = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))
        if got.shape != want.shape or error > FLOAT_AGREEMENT:
            path.unlink()
            raise InputError(
                f"litert: litert-torch's float model departs from the FP32 ONNX (output {got.shape} vs "
                f"{want.shape}, relative error {error:.2g})"
            )
    return path


class LiteRtBackend(Backend):
    """LiteRT's interpreter on CPU (XNNPACK), static INT8 per op from the plan."""

    name = "litert"
    runtime = "litert"
    objective = Objective.SPEED
    description = "LiteRT CPU (XNNPACK): INT8 from the plan's convs through the backbone, decoding float"
    placement = OrtCpuBackend.placement  # the same integer arithmetic; see the module docstring

    def sweep_formats(self) -> tuple[QuantFormat, ...]:
        return (W8A8,)

    def fast_precisions(self, kind: ConvKind) -> frozenset[str]:
        if kind in (ConvKind.LINEAR, ConvKind.GROUPED):  # matched to TFLite ops by conv weights only
            return frozenset()
        return frozenset({Precision(WeightDtype.INT8, ActDtype.INT8).label})

    def availability(self) -> Availability:
        missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
        if missing:
            return Availability(
                False, f"{', '.join(missing)} not installed (pip install 'quantsweep[litert]')"
            )
        return Availability(True)

    def writable(self) -> Availability:
        return self.availability()  # the converter, the quantizer and the interpreter: one extra

    def save(self, model: onnx.ModelProto, path: Path, *, source: ModelSource | None = None) -> Path:
        """The Q/DQ ONNX at ``path`` and, beside it, the ``.tflite`` quantized op by op for its plan."""
        if source is None:
            raise InputError("litert makes its artifacts from the model: save needs the run's ModelSource")
        onnx.save(model, str(path))
        base = float_tflite(source)
        graph = _graph(str(base), str(source.fp32_path))
        convs = {node.name for node in model.graph.node if node.op_type == "Conv"}
        plan = {node: w != "float" for node, (w, _) in node_precisions(model).items() if node in convs}
        scopes = [graph.scopes[i] for i in float_ops(graph, plan)]
        out = quantize_tflite(base, path.with_suffix(SUFFIX), float_scopes=scopes, images=source.images)
        quantized = [node for node, q in plan.items() if q]
        carried = carry_plan_codes(out, graph, model, quantized)
        if carried < len(quantized):
            LOG.info(
                "litert %s: %d of %d convs kept ai-edge-quantizer's own weights",
                out.name,
                len(quantized) - carried,
                len(quantized),
            )
        return out

    def load(self, path: Path) -> Runner:
        """A ``.tflite``; for an ``.onnx`` (the FP32 model every target shares) the float ``.tflite``
        made beside it."""
        path = Path(path)
        tflite = path if path.suffix == SUFFIX else path.with_suffix(SUFFIX)
        if not tflite.is_file():
            raise InputError(f"litert: {tflite.name} not found beside {path.name} (materialize makes it)")
        return LiteRtRunner(tflite)

    def baselines(self) -> dict[str, BaselineWriter]:
        """Ultralytics' ``format='litert', quantize=8`` export (every op INT8 but graph input/output)."""
        return {ULTRALYTICS_INT8: _ultralytics_litert}

    def deploy_hint(self, path: Path) -> str:
        return (
            f"ai_edge_litert.interpreter.Interpreter(model_path='{path.name}', num_threads={threads()}) "
            "(XNNPACK, the default CPU delegate); float NCHW input, float output"
        )


def _ultralytics_litert(inputs: ModelSource, path: Path) -> Path:
    """Ultralytics' export, its converter's step log and quantizer's bars kept off the terminal."""
    with _quiet():
        return write_ultralytics_int8(inputs, path, fmt=LITERT_INT8)


@functools.lru_cache(maxsize=4)
def _graph(float_path: str, fp32_path: str) -> _FloatGraph:
    return _FloatGraph(Path(float_path), onnx.load(fp32_path))
