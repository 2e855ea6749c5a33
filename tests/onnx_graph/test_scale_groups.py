"""One range per group of conv inputs that meet at a Concat or move into each other."""

from __future__ import annotations

from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.scale_groups import input_groups, shared_ranges


def _node_ranges(tiny_onnx):
    model = tiny_onnx["model"]
    reads = {node.name: node.input[0] for node in model.graph.node if node.input}
    nodes = set(tiny_onnx["nodes"].values())
    found = RangeCache(model, tiny_onnx["images"])({reads[n] for n in nodes})
    return {n: found[reads[n]] for n in nodes}


def test_c2f_and_neck_inputs_form_groups_and_share_the_union_of_their_ranges(tiny_onnx) -> None:
    model = tiny_onnx["model"]
    nodes = {n: n for n in tiny_onnx["nodes"].values()}
    groups = input_groups(model, nodes)
    # a C2f's bottleneck reads a Split half that its output conv reads through the Concat
    assert any({"/model.2/m.0/cv1/conv/Conv", "/model.2/cv2/conv/Conv"} <= set(g) for g in groups), groups
    # the neck: the backbone's P3 output feeds the next stride-2 conv and the upsampled Concat
    assert any({"/model.5/conv/Conv", "/model.15/cv1/conv/Conv"} <= set(g) for g in groups), groups
    ranges = _node_ranges(tiny_onnx)
    shared = shared_ranges(model, ranges, nodes)
    grouped = set().union(*groups)
    for members in groups:
        assert len({shared[n] for n in members}) == 1
        union = shared[members[0]]
        assert union.lo == min(ranges[n].lo for n in members)
        assert union.hi == max(ranges[n].hi for n in members)
        assert any(ranges[n] != union for n in members) or len({ranges[n] for n in members}) == 1
    alone = [n for n in nodes if n not in grouped]
    assert alone and all(shared[n] == ranges[n] for n in alone)
    assert "/model.0/conv/Conv" in alone  # the first conv reads the image only
