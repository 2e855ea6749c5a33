"""Runners made for scoring give, in order, the outputs the deployed runner gives (ONNX Runtime's overlap
requests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.targets import get_backend
from quantsweep.targets.openvino_cpu import DEPLOY_CONFIG
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


def test_onnx_runtime_scores_two_requests_at_once_and_openvino_one(tiny_onnx, tmp_path):
    assert get_backend("ort-cpu").load_for_scoring(tiny_onnx["path"]).streams == 2
    assert get_backend("ort-cpu").load(tiny_onnx["path"]).streams == 1
    # OpenVINO 2026.4 can deadlock destroying a compiled model made for throughput (two streams) from
    # Python, a stream thread waiting for the GIL: it scores with the deployed (latency) config
    _, ir = _artifact(tiny_onnx, "openvino", tmp_path)
    assert get_backend("openvino").load_for_scoring(ir).config == DEPLOY_CONFIG
