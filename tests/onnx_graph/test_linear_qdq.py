"""Linear layers (MatMul/Gemm in ONNX) get per-output-channel scales on the right axis.

ONNX stores a MatMul weight ``[in, out]`` (Gemm with ``transB``: ``[out, in]``); Torch quantizes
``[out, in]`` per output channel. A wrong axis gives one scale per input channel, which this test
sees as a large difference from the Torch simulation.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from quantsweep.core.config import ActDtype, CalibConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.evaluation.artifact_checks import relative_l2, run_onnx, torch_export_output
from quantsweep.models.network import StagedNetwork, enumerate_layers
from quantsweep.onnx_graph.export import export_fp32, map_layers
from quantsweep.onnx_graph.inspect import precision_counts
from quantsweep.quant.apply import calibrate_inputs
from tests.conftest import NodePlan, qdq_artifact


class _Body(nn.Module):
    """Token Linears (MatMul), a pooled Linear (Gemm) and one Linear called twice (shared weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 8, stride=8)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.twice = nn.Linear(32, 32)
        self.pooled = nn.Linear(32, 12)
        # channel-dependent magnitudes: per-input-channel scales would differ from per-output ones
        with torch.no_grad():
            for layer in (self.fc1, self.fc2, self.twice, self.pooled):
                layer.weight.mul_(torch.logspace(-1, 1, layer.weight.shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # [N, L, 32]
        tokens = self.fc2(torch.relu(self.fc1(tokens)))
        tokens = self.twice(torch.relu(self.twice(tokens)))
        return self.pooled(tokens.mean(dim=1))  # 2-D input: Gemm


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    torch.manual_seed(0)
    body = _Body().eval()
    wrapper = nn.Sequential(body)
    network = StagedNetwork(module=wrapper, blocks=[body], block_names=["0"], sources=[-1], keep=frozenset())
    images = torch.rand(4, 3, 64, 64)
    layers = enumerate_layers(network, images[:1])
    model = export_fp32(network, imgsz=64, path=tmp_path_factory.mktemp("lin") / "fp32.onnx")
    mapping = map_layers(model, wrapper, layers)

    def drive():
        with torch.no_grad():
            network.run(images)
            yield None

    amax = calibrate_inputs(wrapper, [layer.name for layer in layers], drive(), calib=CalibConfig())
    return network, images, layers, model, mapping, amax


def test_linear_layers_map_to_matmul_and_gemm(linear_model) -> None:
    _network, _images, layers, model, mapping, _amax = linear_model
    ops = {n.name: n.op_type for n in model.graph.node}
    linear = [layer.name for layer in layers if layer.kind == "Linear"]
    assert sorted(ops[mapping.nodes[name]] for name in linear) == ["Gemm", "MatMul", "MatMul", "MatMul"]


@pytest.mark.parametrize(
    ("fmt", "tolerance"),
    [
        (QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL), 1e-6),
        (QuantFormat(WeightDtype.INT8, ActDtype.FP16, Granularity.PER_CHANNEL), 1e-6),
        (QuantFormat(WeightDtype.FP8, ActDtype.FP16, Granularity.PER_CHANNEL), 1e-6),
        (QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL, 16), 1e-6),
        (QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL), 1e-3),
    ],
)
def test_linear_artifacts_equal_torch_fake_quant(linear_model, tmp_path, fmt, tolerance) -> None:
    network, images, layers, model, mapping, amax = linear_model
    assignment = {layer.name: fmt for layer in layers if layer.kind == "Linear"}
    plans = {mapping.nodes[name]: NodePlan(fmt, amax[name]) for name in assignment}
    path = tmp_path / "q.onnx"
    onnx.save(qdq_artifact(model, plans), path)
    onnx.checker.check_model(str(path))
    # four Linear layers, the one called twice counted once
    assert precision_counts(onnx.load(path)) == {"float": 1, f"{fmt.weight.value}-{fmt.act.value}": 4}
    output, _ = run_onnx(path, images, graph_as_written=True)
    reference = torch_export_output(network, images, assignment=assignment, act_ranges=amax)
    fp32 = torch_export_output(network, images, assignment={}, act_ranges=None)
    assert relative_l2(reference, fp32) > 10 * tolerance  # quantization is visible at all
    assert relative_l2(output, reference) < tolerance
