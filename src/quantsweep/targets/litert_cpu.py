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
import importlib.util
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.core.errors import InputError
from quantsweep.models import load_model
from quantsweep.models.ultralytics_adapter import UltralyticsExport
from quantsweep.onnx_graph.inspect import node_precisions
from quantsweep.onnx_graph.ort_sessions import SessionOptions, ort_session
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets.base import (
    Availability,
    Backend,
    BaselineWriter,
    ConvKind,
    ModelSource,
    Objective,
    Runner,
)
from quantsweep.targets.litert_recipe import (
    carry_plan_codes,
    float_graph,
    float_ops,
    quantize_tflite,
    quiet,
    threads,
)
from quantsweep.targets.ort_cpu import OrtCpuBackend
from quantsweep.targets.ultralytics_baseline import ULTRALYTICS_INT8, write_ultralytics_int8

LOG = logging.getLogger(__name__)
SUFFIX = ".tflite"
W8A8 = QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL)  # XNNPACK QS8: no saturation
_NEEDS = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert")
FLOAT_AGREEMENT = 1e-4  # the converted float model against the FP32 ONNX in ONNX Runtime
# Ultralytics' all-INT8 LiteRT export (box decoding in INT8, graph input/output float)
LITERT_INT8 = UltralyticsExport("litert", 8, needs="litert_torch")


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
    with quiet(), torch.no_grad():
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
        graph = float_graph(str(base), str(source.fp32_path))
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
    with quiet():
        return write_ultralytics_int8(inputs, path, fmt=LITERT_INT8)
