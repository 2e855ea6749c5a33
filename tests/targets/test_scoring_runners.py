"""Runners made for scoring overlap requests and give, in order, the outputs the deployed runner gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.targets import get_backend
from tests.conftest import CPU_W8A8


def _artifact(tiny_onnx, target: str, tmp_path):
    """``target``'s artifact of the tiny model: every conv W8A8 on the CPU targets, FP32 for size."""
    backend = get_backend(target)
    if target == "size":
        return backend, tiny_onnx["path"]
    plan = {node: CPU_W8A8 for node in tiny_onnx["nodes"].values()}
    model = backend.write(
        tiny_onnx["model"], plan, ranges=RangeCache(tiny_onnx["model"], tiny_onnx["images"])
    )
    return backend, backend.save(model, tmp_path / f"{target}.onnx")


@pytest.mark.parametrize("target", ["ort-cpu", "openvino", "size"])
def test_a_scoring_runner_gives_the_deployed_runners_outputs_in_order(tiny_onnx, target, tmp_path):
    backend, path = _artifact(tiny_onnx, target, tmp_path)
    size = tiny_onnx["images"].shape[-1]
    images = [
        torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(i)).numpy() for i in range(9)
    ]
    deployed = backend.load(path)
    scoring = backend.load_for_scoring(path)
    expected = [deployed(image) for image in images]
    found = scoring.run_all(images)
    assert len(found) == len(images)
    for i, (want, got) in enumerate(zip(expected, found, strict=True)):
        assert np.array_equal(want, got), f"image {i}: max difference {np.abs(want - got).max()}"
    # the images differ, so an output out of order would be caught above
    assert not np.array_equal(expected[0], expected[1])


def test_scoring_runners_run_two_requests_at_once(tiny_onnx, tmp_path):
    _, ir = _artifact(tiny_onnx, "openvino", tmp_path)
    scoring = get_backend("openvino").load_for_scoring(ir)
    assert int(scoring.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) == 2
    assert get_backend("ort-cpu").load_for_scoring(tiny_onnx["path"]).streams == 2
    assert get_backend("ort-cpu").load(tiny_onnx["path"]).streams == 1


def test_the_deployed_runner_and_the_scoring_runner_run_float_ops_at_one_precision(tiny_onnx, tmp_path):
    _, ir = _artifact(tiny_onnx, "openvino", tmp_path)
    backend = get_backend("openvino")
    assert backend.load_for_scoring(ir).float_precision() == backend.load(ir).float_precision()
