"""The CPU's INT8 products: where ``hardware`` says they saturate, a full-range INT8 conv departs in
both CPU runtimes and the 7-bit weights the targets then write run exactly; elsewhere both are exact.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantsweep.core.config import WeightDtype
from quantsweep.core.hardware import cpu_int8_weights, int8_products_saturate, portable_int8_weights
from quantsweep.core.runs import cpu_flags
from quantsweep.quant.numerics import INT_LIMITS

CHANNELS = 64


def _qdq_conv(weight_max: int) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A Q/DQ 1x1 conv (UINT8 input codes 200..255, weights +-``weight_max`` in same-sign pairs: the
    pattern that overflows a 16-bit pair sum) and its exact output computed in integers."""
    rng = np.random.default_rng(0)
    codes = rng.integers(200, 256, size=(1, CHANNELS, 4, 4))
    weight = np.full((CHANNELS, CHANNELS, 1, 1), weight_max, np.int8)
    weight[::2] = -weight_max
    exact = np.einsum("bchw,oc->bohw", codes, weight[:, :, 0, 0].astype(np.int64)) * 0.01 * 0.02
    inits = [
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(CHANNELS, 0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(CHANNELS, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.01, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.array(np.abs(exact).max() / 100, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"]),
        # an output Q/DQ so ONNX Runtime fuses the conv into QLinearConv, as the ort-cpu target writes it
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "saturation",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, codes.shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model, (codes * 0.01).astype(np.float32), exact


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from quantsweep.onnx_graph.ort_sessions import SessionOptions, ort_session  # noqa: PLC0415

    return ort_session(model.SerializeToString(), SessionOptions()).run(None, {"x": x})[0]


def _openvino(model: onnx.ModelProto, x: np.ndarray, tmp_path) -> np.ndarray:
    import openvino as ov  # noqa: PLC0415

    path = tmp_path / "conv.onnx"
    onnx.save(model, str(path))
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", config)
    return compiled(x)[0]


def _relative_error(out: np.ndarray, exact: np.ndarray) -> float:
    return float(np.abs(out - exact).max() / np.abs(exact).max())


def test_flags_decide_the_weight_type() -> None:
    if not int8_products_saturate(frozenset({"avx2", "avx512_vnni"})):  # an x86 machine
        assert cpu_int8_weights(frozenset({"avx2", "avx512f", "avx512_vnni"})) is WeightDtype.INT8
        assert cpu_int8_weights(frozenset({"avx2", "amx_int8"})) is WeightDtype.INT8
    if int8_products_saturate(frozenset({"avx2"})):
        assert cpu_int8_weights(frozenset({"avx2", "avx512f"})) is WeightDtype.INT7
    # what the CPU targets write: exact on every CPU of the architecture, whichever builds it
    assert portable_int8_weights("x86_64") is WeightDtype.INT7
    assert portable_int8_weights("aarch64") is WeightDtype.INT8


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_weight_type_chosen_here_runs_exactly_and_full_int8_departs_only_where_predicted(
    runtime, tmp_path
) -> None:
    def error(weight: WeightDtype) -> float:
        model, x, exact = _qdq_conv(INT_LIMITS[weight][1])
        out = _ort(model, x) if runtime == "onnxruntime" else _openvino(model, x, tmp_path)
        return _relative_error(out, exact)

    assert error(cpu_int8_weights()) < 0.011  # the output Q step is 1/100 of the maximum
    assert error(portable_int8_weights()) < 0.011
    full = error(WeightDtype.INT8)
    if int8_products_saturate():
        assert full > 0.2, f"{runtime} ran full-range INT8 exactly on a CPU said to saturate"
    else:
        assert full < 0.011, f"{runtime} saturated full-range INT8 on a CPU with VNNI/AMX"


# run in a child process: oneDNN reads ONEDNN_MAX_CPU_ISA once, when OpenVINO first loads it
_CAPPED_ERRORS = """
import json, pathlib, tempfile
from quantsweep.core.config import WeightDtype
from quantsweep.quant.numerics import INT_LIMITS
from tests.core.test_hardware import _openvino, _qdq_conv, _relative_error
errors = {}
for weight in (WeightDtype.INT8, WeightDtype.INT7):
    model, x, exact = _qdq_conv(INT_LIMITS[weight][1])
    errors[weight.value] = _relative_error(_openvino(model, x, pathlib.Path(tempfile.mkdtemp())), exact)
print(json.dumps(errors))
"""


def test_openvino_on_the_kernels_of_a_cpu_without_vnni_saturates_int8_and_runs_int7_exactly() -> None:
    """``ONEDNN_MAX_CPU_ISA=AVX2`` makes OpenVINO's CPU plugin run the INT8 kernels of an x86 CPU
    without VNNI (``jit_avx2_I8``, 16-bit pair sums), so the INT7 decision is checked on every x86
    machine, not only on one that lacks VNNI; the same cap let us measure what an artifact built on
    a VNNI machine scores on such a CPU (docs/decisions.md)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or "avx2" not in cpu_flags():
        pytest.skip("the capped kernels are x86 AVX2 ones")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _CAPPED_ERRORS], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert errors["int8"] > 0.2, "full-range INT8 ran exactly on the kernels of a CPU without VNNI"
    assert errors["int7"] < 0.011


@pytest.mark.parametrize("target", ["ort-cpu", "openvino"])
def test_a_cpu_target_says_which_cpus_run_its_weight_codes_exactly(target, tmp_path) -> None:
    from quantsweep.targets import get_backend  # noqa: PLC0415

    notes = {}
    for weight in (WeightDtype.INT8, WeightDtype.INT7):
        model, _, _ = _qdq_conv(INT_LIMITS[weight][1])
        path = tmp_path / f"{weight.value}.onnx"
        onnx.save(model, str(path))
        # the openvino artifact is the IR; its Q/DQ ONNX lies beside it
        notes[weight] = get_backend(target).weight_codes_note(
            path.with_suffix(".xml") if target == "openvino" else path
        )
    assert "without VNNI saturates" in notes[WeightDtype.INT8]
    assert "exact on every x86 CPU" in notes[WeightDtype.INT7]
    assert get_backend(target).weight_codes_note(tmp_path / "absent.onnx") is None
