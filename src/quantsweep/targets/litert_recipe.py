"""LiteRT's half of the ``litert`` target: a float ``.tflite``'s op graph, the per-op INT8 recipe a
plan becomes, calibration, and the run's weight codes carried into the quantized file.

``targets/litert_cpu.py`` is the target (runner, conversion, registration); this module holds what
it does to TFLite flatbuffers with ai-edge-quantizer and ai-edge-litert (imported when used).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantsweep.core.errors import InputError
from quantsweep.core.hardware import usable_cores
from quantsweep.onnx_graph.inspect import dequantized_inputs, weight_codes

_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def threads() -> int:
    """XNNPACK threads: one per core this process may use (recorded in every deploy line)."""
    return usable_cores()


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


class FloatGraph:
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


def float_ops(graph: FloatGraph, plan: Mapping[str, bool]) -> list[int]:
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


def quiet():
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
    with quiet():
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
    """One INT8 conv of the quantized ``tflite`` given the plan's codes, scales and bias (None: the
    file's own bias, requantized for the new weight scales); False, untouched, where it is not one."""
    tensors = tflite.subgraphs[0].tensors
    weight, source = tensors[op.inputs[1]], tensors[op.inputs[0]].quantization
    if weight.quantization is None or len(weight.quantization.scale) != len(scale):
        return False
    if source is None or len(source.scale) != 1:
        return False
    bias_scale = float(source.scale[0]) * scale.astype(np.float64)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        bias_tensor = tensors[op.inputs[2]]
        if bias is None:  # the file's bias, at the scale ai-edge-quantizer gave it
            from ai_edge_quantizer.utils import tfl_flatbuffer_utils  # noqa: PLC0415

            stored = np.asarray(tfl_flatbuffer_utils.get_tensor_data(bias_tensor, tflite.buffers), np.float64)
            bias = stored * np.asarray(bias_tensor.quantization.scale, dtype=np.float64)
        _set_buffer(tflite, op.inputs[2], np.round(bias / bias_scale).astype(np.int32))
        bias_tensor.quantization.scale = bias_scale.astype(np.float32).tolist()
    _set_buffer(tflite, op.inputs[1], codes.transpose(order).astype(np.int8))
    weight.quantization.scale = scale.astype(np.float32).tolist()
    return True


def carry_plan_codes(path: Path, graph: FloatGraph, model: onnx.ModelProto, nodes) -> int:
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
    with quiet():
        writer.quantize(calibration_result=ranges, enable_progress_report=False).export_model(
            str(out), overwrite=True
        )
    return out


@functools.lru_cache(maxsize=4)
def float_graph(float_path: str, fp32_path: str) -> FloatGraph:
    return FloatGraph(Path(float_path), onnx.load(fp32_path))
