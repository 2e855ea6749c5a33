"""ModelOpt's ONNX PTQ as a second writer of ``tensorrt`` artifacts (``materialize --writer modelopt``).

ModelOpt (``nvidia-modelopt``) quantizes an ONNX model for TensorRT in one mode per call (``int8``
or ``fp8``) and takes the nodes to quantize and to exclude by name. It runs on CPU here: ONNX
Runtime's CPU provider calibrates on the sweep's calibration images. Settings and why:

- ``nodes_to_quantize``/``nodes_to_exclude``: the plan's quantized and float nodes, each as an
  anchored, escaped pattern (ModelOpt matches names with ``re.match``, a prefix match);
- ``op_types_to_quantize``: the op types of the planned nodes only, so nothing else gets Q/DQ;
- ``dq_only=True``: weights stored as INT8/FP8 codes behind a DequantizeLinear, as the native
  writer stores them (and as :func:`quantsweep.onnx_graph.inspect.node_precisions` reads them);
- ``high_precision_dtype="fp32"``: float layers stay FP32, like the native artifacts, so both run
  and compare in ONNX Runtime on CPU;
- calibration: ModelOpt's default per mode (entropy for INT8, max for FP8).

ModelOpt also excludes, on its own, the convs it judges slow in the mode (in FP8: depthwise, small
channel counts, large filters; see its ``find_nodes_from_convs_to_exclude``). Those nodes come out
float, not at the plan's precision: :func:`plan_deviations` lists them and the verification record
says whether the counts match the plan.

Installing it: its ``[onnx]`` extra replaces onnxruntime with onnxruntime-gpu (and pulls cupy), so
use its own environment: ``python -m venv --system-site-packages .venv-modelopt`` then
``.venv-modelopt/bin/pip install -e .[modelopt]``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch

from quantsweep.core.errors import InputError
from quantsweep.onnx_graph.inspect import node_precisions, precision_label
from quantsweep.schemes.scheme_records import Precision

LOG = logging.getLogger(__name__)
WRITERS = ("native", "modelopt")
MODES = {"int8-int8": "int8", "fp8-fp8": "fp8"}
INSTALL_HINT = (
    "ModelOpt is not installed: install it in its own environment (python -m venv "
    "--system-site-packages .venv-modelopt; .venv-modelopt/bin/pip install -e .[modelopt])"
)


def check_writer(writer: str, targets: tuple[str, ...]) -> None:
    """Refuse, in one line, an unknown writer, ModelOpt for another target, or ModelOpt missing."""
    if writer not in WRITERS:
        raise InputError(f"unknown writer '{writer}'; valid: {', '.join(WRITERS)}")
    if writer == "native":
        return
    if targets != ("tensorrt",):
        raise InputError("--writer modelopt writes tensorrt artifacts only: give --target tensorrt")
    if importlib.util.find_spec("modelopt") is None or importlib.util.find_spec("onnx_graphsurgeon") is None:
        raise InputError(INSTALL_HINT)


def quantize_mode(plan: Mapping[str, Precision]) -> str:
    """ModelOpt's mode for a plan: the precision of most of its quantized nodes (int8 or fp8)."""
    labels = [p.label for p in plan.values() if p.weight is not None]
    if not labels:
        raise InputError("the scheme quantizes no node; nothing for ModelOpt to write")
    label = max(set(labels), key=labels.count)
    if label not in MODES:
        raise InputError(f"ModelOpt writes int8-int8 or fp8-fp8 schemes, not {label}")
    return MODES[label]


def _exact(names: list[str]) -> list[str]:
    return [f"{re.escape(name)}$" for name in names]


def write_modelopt(
    fp32_path: Path, out_path: Path, *, plan: Mapping[str, Precision], images: torch.Tensor
) -> float:
    """ModelOpt-quantize ``fp32_path`` to ``out_path`` for ``plan``; return the seconds it took.

    Nodes planned at another precision than the scheme's mode (INT8 depthwise convs of an FP8
    scheme) are excluded: ModelOpt writes one mode per call, so they stay float.
    """
    from modelopt.onnx.quantization import quantize  # noqa: PLC0415 (optional; own environment)

    mode = quantize_mode(plan)
    model = onnx.load(str(fp32_path), load_external_data=False)
    op_types = {node.name: node.op_type for node in model.graph.node}
    wanted = [n for n, p in plan.items() if MODES.get(p.label) == mode]
    excluded = [n for n in plan if n not in wanted]
    start = time.perf_counter()
    quantize(
        str(fp32_path),
        quantize_mode=mode,
        calibration_data=images.numpy(),
        calibration_eps=["cpu"],
        op_types_to_quantize=sorted({op_types[n] for n in wanted}),
        nodes_to_quantize=_exact(wanted),
        nodes_to_exclude=_exact(excluded),
        dq_only=True,
        high_precision_dtype="fp32",
        output_path=str(out_path),
        log_level="WARNING",
    )
    return time.perf_counter() - start


def plan_deviations(model: onnx.ModelProto, plan: Mapping[str, Precision]) -> dict[str, list[str]]:
    """``{node: [planned, written]}`` for every planned node the file holds at another precision."""
    found = {name: precision_label(*pair) for name, pair in node_precisions(model).items()}
    return {
        node: [precision.label, found.get(node, "missing")]
        for node, precision in plan.items()
        if found.get(node, "missing") != precision.label
    }
