"""The ``litert`` target on a tiny YOLOv8n checkpoint: float ``.tflite`` from the model, INT8 per op
from the plan, run in LiteRT (XNNPACK) and checked against Torch fake quantization of the plan."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from quantsweep.core.config import ActDtype, CalibConfig, WeightDtype
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.evaluation.artifact_checks import torch_export_output
from quantsweep.evaluation.runtime_check import check_on_runtime
from quantsweep.models import load_model
from quantsweep.models.network import enumerate_layers
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.export import export_fp32, map_layers
from quantsweep.onnx_graph.inspect import weight_codes
from quantsweep.quant.apply import calibrate_inputs
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets import get_backend
from quantsweep.targets.base import ModelSource, conv_kinds
from quantsweep.targets.litert_recipe import float_graph, op_kind
from tests.conftest import TINY_IMGSZ

pytestmark = pytest.mark.skipif(
    not get_backend("litert").availability().available, reason="pip install '.[litert]' (CI installs it)"
)
INT8 = Precision(WeightDtype.INT8, ActDtype.INT8)


def _filter_types(path: Path) -> dict[str, np.dtype]:
    """Filter dtype of every CONV_2D/DEPTHWISE_CONV_2D op of a ``.tflite``, by the op's scope."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as utils  # noqa: PLC0415

    model = utils.read_model(str(path))
    graph = model.subgraphs[0]
    found = {}
    for index, op in enumerate(graph.operators):
        if op_kind(model, index) in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            found[utils.get_op_scope(op, graph.tensors)] = graph.tensors[op.inputs[1]].type
    return found


@pytest.fixture(scope="module")
def case(tiny_checkpoint, tiny_data, tmp_path_factory):
    """The checkpoint's FP32 ONNX, calibration images, Torch ranges and the ModelSource."""
    out = tmp_path_factory.mktemp("litert")
    loaded = load_model(tiny_checkpoint)
    images = load_batch(resolve_images(tiny_data), imgsz=TINY_IMGSZ).images
    fp32 = export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=out / "fp32.onnx")
    layers = enumerate_layers(loaded.network, images[:1])
    nodes = map_layers(fp32, loaded.network.module, layers).nodes

    def drive():
        with torch.no_grad():
            loaded.network.run(images)
            yield None

    ranges = calibrate_inputs(loaded.network.module, list(nodes), drive(), calib=CalibConfig())
    readers = {node.name: node.input[0] for node in fp32.graph.node if node.input}
    cache = RangeCache(fp32, images, preset={readers[nodes[n]]: r for n, r in ranges.items()})
    source = ModelSource(
        fp32_path=out / "fp32.onnx", images=images, model=tiny_checkpoint, calib_paths=(), imgsz=TINY_IMGSZ
    )
    return {"out": out, "loaded": loaded, "fp32": fp32, "nodes": nodes, "ranges": ranges, "cache": cache,
            "source": source, "images": images}  # fmt: skip


def _artifact(case, name: str, *, kept: set[str], edit=None) -> tuple[Path, np.ndarray]:
    """The plan (every conv INT8 but ``kept``, Torch names) as the target writes it, and Torch's output."""
    backend = get_backend("litert")
    kinds = conv_kinds(case["fp32"])
    plan = {node: Precision(None) if layer in kept else INT8 for layer, node in case["nodes"].items()}
    plan = backend.adapt_plan(plan, kinds)
    model = backend.write(case["fp32"], plan, ranges=case["cache"])
    if edit is not None:
        edit(model)
    artifact = backend.save(model, case["out"] / f"{name}.onnx", source=case["source"])
    layers = {node: layer for layer, node in case["nodes"].items()}
    assignment = {layers[node]: p.as_format() for node, p in plan.items() if p.weight is not None}
    reference = torch_export_output(
        case["loaded"].network, case["images"], assignment=assignment, act_ranges=case["ranges"]
    )
    return artifact, reference


def test_k0_runs_int8_in_litert_as_torch_simulates(case) -> None:
    backend = get_backend("litert")
    artifact, reference = _artifact(case, "k0", kept=set())
    assert artifact.suffix == ".tflite" and artifact.with_suffix(".onnx").is_file()
    # the float model every litert figure is measured against lies beside the FP32 ONNX
    assert (case["out"] / "fp32.tflite").is_file()
    types = _filter_types(artifact)
    assert types and all(t == 9 for t in types.values()), types  # TensorType.INT8 == 9: every conv
    runner = backend.load(artifact)
    assert runner.input_size() == (TINY_IMGSZ, TINY_IMGSZ)
    float_runner = backend.load(case["out"] / "fp32.onnx")
    image = case["images"][:1].numpy()
    assert runner(image).shape == float_runner(image).shape
    (check,) = check_on_runtime(backend, artifact, images=case["images"][:4], torch_output=reference[:4])
    assert check.deployed and check.passed, check
    assert check.float_precision == "f32"


def test_the_tflite_carries_the_plans_weight_codes(case) -> None:
    # ai-edge-quantizer rounds float filters itself; the artifact must hold the codes the Q/DQ ONNX
    # (the run's quantizer: round-to-nearest here, GPTQ in a run) stores, conv by conv
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as utils  # noqa: PLC0415

    def clip_codes(model: onnx.ModelProto) -> None:
        # codes on another grid than round-to-nearest of the float weights (as GPTQ's are): every
        # weight's codes clipped to -100..100, which the quantizer's own rounding would not give
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4:
                codes = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(np.clip(codes, -100, 100).astype(np.int8), init.name))

    artifact, _ = _artifact(case, "codes", kept=set(), edit=clip_codes)
    model = onnx.load(str(artifact.with_suffix(".onnx")))
    graph = float_graph(str(case["out"] / "fp32.tflite"), str(case["out"] / "fp32.onnx"))
    tflite = utils.read_model(str(artifact))
    tensors = tflite.subgraphs[0].tensors
    by_scope = {utils.get_op_scope(op, tensors): op for op in tflite.subgraphs[0].operators}
    compared = 0
    for node, index in graph.conv_op.items():
        codes, scale, _ = weight_codes(model, node)
        order = (1, 2, 3, 0) if graph.depthwise[index] else (0, 2, 3, 1)
        op = by_scope[graph.scopes[index]]
        stored = np.asarray(utils.get_tensor_data(tensors[op.inputs[1]], tflite.buffers))
        assert np.abs(codes).max() <= 100
        np.testing.assert_array_equal(stored.reshape(codes.transpose(order).shape), codes.transpose(order))
        np.testing.assert_allclose(tensors[op.inputs[1]].quantization.scale, scale, rtol=1e-6)
        compared += 1
    assert compared == len(case["nodes"])


def test_a_kept_conv_stays_float_and_the_rest_int8(case) -> None:
    kept = "model.2.cv2.conv"
    artifact, _ = _artifact(case, "k1", kept={kept})
    types = _filter_types(artifact)
    floats = [scope for scope, t in types.items() if t != 9]
    assert len(floats) == 1, floats  # the kept conv (TensorType.FLOAT32 == 0); every other conv INT8
    assert types[floats[0]] == 0
    assert len(types) - 1 == sum(t == 9 for t in types.values())


def test_a_save_without_the_model_is_refused(case, tmp_path) -> None:
    backend = get_backend("litert")
    with pytest.raises(Exception, match="ModelSource"):
        backend.save(case["fp32"], tmp_path / "k0.onnx")


def test_ultralytics_exports_are_read_back_in_pixels(case, tmp_path) -> None:
    # Ultralytics divides detect boxes by the input size in its LiteRT export and says so in the
    # metadata.json it appends to the file; the runner multiplies them back
    backend = get_backend("litert")
    plain = case["out"] / "fp32.tflite"
    tagged = tmp_path / "ultralytics.tflite"
    shutil.copyfile(plain, tagged)
    meta = {"author": "Ultralytics", "task": "detect", "imgsz": [TINY_IMGSZ, TINY_IMGSZ], "end2end": False}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("metadata.json", json.dumps(meta))
    with tagged.open("ab") as file:
        file.write(buffer.getvalue())
    image = case["images"][:1].numpy()
    want = backend.load(plain)(image)
    got = backend.load(tagged)(image)
    np.testing.assert_allclose(got[:, :4], want[:, :4] * TINY_IMGSZ, rtol=1e-6)
    np.testing.assert_array_equal(got[:, 4:], want[:, 4:])
