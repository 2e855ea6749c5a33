"""Pricing float islands from the runtimes' own per-node profiles, and the order they are tried in."""

from __future__ import annotations

import pytest

from quantsweep.core.config import IslandOrder
from quantsweep.evaluation.island_costs import (
    IslandCosts,
    conv_units,
    faster_in_float,
    free_probes,
    island_order,
    measure_island_costs,
    unit_times,
)
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.schemes.scheme_records import LayerAssignment, Precision
from quantsweep.targets import get_backend
from quantsweep.targets.base import Runner
from tests.conftest import CPU_W8A8


def test_conv_units_hold_the_conv_and_the_activation_fused_into_it(tiny_onnx) -> None:
    units = conv_units(tiny_onnx["model"])
    convs = [n.name for n in tiny_onnx["model"].graph.node if n.op_type == "Conv"]
    assert sorted(units) == sorted(convs)
    # an Ultralytics Conv module: conv, then SiLU as Mul(x, Sigmoid(x))
    assert units["/model.0/conv/Conv"] == ["/model.0/conv/Conv", "/model.0/act/Sigmoid", "/model.0/act/Mul"]
    # DFL's bare conv has no activation, and the Softmax (with the Transpose and Reshape before it)
    # only feeds it: ONNX Runtime runs that Softmax 6x slower feeding a float conv than a Q
    dfl = next(n for n in convs if "dfl" in n)
    assert units[dfl][0] == dfl
    assert [n.split("/")[-1] for n in units[dfl][1:]] == ["Softmax", "Transpose", "Reshape", "Concat"]
    # a C2f's output conv owns the Concat only it reads; a bottleneck conv shares its input
    assert units["/model.2/cv2/conv/Conv"][3:] == ["/model.2/Concat"]
    assert units["/model.2/m.0/cv1/conv/Conv"][3:] == []


def test_unit_times_charge_each_node_to_the_longest_name_it_carries() -> None:
    units = {
        "/model.1/conv/Conv": ["/model.1/conv/Conv", "/model.1/act/Mul"],
        "/model.10/conv/Conv": ["/model.10/conv/Conv"],
        "/model.2/m.0/cv1/conv/Conv": ["/model.2/m.0/cv1/conv/Conv"],
        "/model.23/dfl/conv/Conv": ["/model.23/dfl/conv/Conv", "/model.23/dfl/Softmax", "/model.23/Concat"],
    }
    times = {
        "/model.1/conv/Conv/WithoutBiases": 1.0,  # OpenVINO
        "/model.1/act/Mul/QuickGeluFusion/": 0.5,  # ONNX Runtime's fused activation
        "images/q_DQ_/model.1/conv/Conv": 0.25,  # a quantize fused in front of it
        "/model.10/conv/Conv_token_3": 2.0,  # not /model.1/
        "/model.2/m.0/cv1/conv/Conv_output_0_nchwc": 4.0,
        "/model.2/Concat": 8.0,  # no conv owns it
        "/model.23/dfl/Softmax": 16.0,  # a feeder of the DFL conv
        "/model.23/Concat_token_2": 32.0,  # the DFL conv's Concat, renamed by the runtime
        "/model.23/Concat_1": 64.0,  # a sibling of that Concat, not it
    }
    assert unit_times(times, units) == {
        "/model.1/conv/Conv": 1.75,
        "/model.10/conv/Conv": 2.0,
        "/model.2/m.0/cv1/conv/Conv": 4.0,
        "/model.23/dfl/conv/Conv": 48.0,
    }


def _layer(name: str, sensitivity: float | None, rank: int | None) -> LayerAssignment:
    return LayerAssignment(name, f"/{name}/Conv", Precision(None), sensitivity, rank, 1)


def test_islands_go_by_sensitivity_per_millisecond_free_ones_at_a_floor() -> None:
    ranking = [_layer("a", 8.0, 1), _layer("b", 4.0, 2), _layer("c", 2.0, 3), _layer("d", 1.0, 4)]
    ranking.append(_layer("skipped", None, None))
    costs = IslandCosts(
        "ort",
        float_ms={"/a/Conv": 9.0, "/b/Conv": 1.0, "/c/Conv": 0.5, "/d/Conv": 1.0, "/skipped/Conv": 0.0},
        int8_ms={"/a/Conv": 1.0, "/b/Conv": 0.5, "/c/Conv": 0.7, "/d/Conv": 0.9, "/skipped/Conv": 0.0},
    )
    # a: 8/8 = 1; b: 4/0.5 = 8; d: 1/0.1 = 10; c is faster in float: priced at the floor, 0.1 x the
    # median positive cost (8, 0.5, 0.1) = 0.05 -> 40; the layer the sweep did not measure stays last
    ordered = island_order(ranking, costs, order=IslandOrder.GAIN_PER_MS)
    assert [a.torch_name for a in ordered] == ["c", "d", "b", "a", "skipped"]
    assert island_order(ranking, costs, order=IslandOrder.RANK) == ranking
    assert island_order(ranking, None, order=IslandOrder.GAIN_PER_MS) == ranking
    assert IslandCosts.from_dict(costs.to_dict()) == costs


@pytest.mark.parametrize("target", ["ort-cpu", "openvino"])
def test_every_conv_unit_is_priced_on_the_runtime(tiny_onnx, tmp_path, target) -> None:
    """The runtime's profiler names every conv of the FP32 model and of the nothing-kept artifact
    (fused, reordered or not), so no island is priced at nothing."""
    backend = get_backend(target)
    plan = {node: CPU_W8A8 for node in tiny_onnx["nodes"].values()}
    model = backend.write(
        tiny_onnx["model"], plan, ranges=RangeCache(tiny_onnx["model"], tiny_onnx["images"])
    )
    artifact = backend.save(model, tmp_path / "k0.onnx")
    units = conv_units(tiny_onnx["model"])
    costs = measure_island_costs(
        backend,
        float_path=tiny_onnx["path"],
        int8_path=artifact,
        units=units,
        image=tiny_onnx["images"][:1].numpy(),
    )
    assert costs is not None and costs.runtime == backend.runtime
    assert set(costs.float_ms) == set(costs.int8_ms) == set(units)
    unpriced = [n for n in units if costs.float_ms[n] <= 0 or costs.int8_ms[n] <= 0]
    assert not unpriced, unpriced


def test_a_runtime_without_a_profiler_prices_nothing(tiny_onnx) -> None:
    """A target whose runner cannot profile (the base ``Runner.node_times``) gets no costs: the
    search then keeps its rank order and says so."""

    class Blind:
        runtime = "blind"

        def load(self, path):
            return type("R", (Runner,), {"__call__": lambda self, image: image})()

    units = conv_units(tiny_onnx["model"])
    image = tiny_onnx["images"][:1].numpy()
    path = tiny_onnx["path"]
    assert measure_island_costs(Blind(), float_path=path, int8_path=path, units=units, image=image) is None


def test_the_free_probes_are_the_most_sensitive_islands_that_cost_nothing() -> None:
    ranking = [
        _layer("dear", 9.0, 1),
        _layer("cheap", 1.0, 2),
        _layer("free", 2.0, 3),
        _layer("x", None, 4),
        _layer("free2", 0.5, 5),
        _layer("free3", 0.7, 6),
    ]
    costs = IslandCosts(
        "ort",
        float_ms={"/dear/Conv": 9.0, "/cheap/Conv": 0.6, "/free/Conv": 0.29, "/x/Conv": 0.0}
        | {"/free2/Conv": 0.05, "/free3/Conv": 0.1},
        int8_ms={"/dear/Conv": 5.0, "/cheap/Conv": 0.4, "/free/Conv": 0.3, "/x/Conv": 4.3}
        | {"/free2/Conv": 0.0, "/free3/Conv": 0.05},
    )
    # budget: 1% of the 10.05 ms INT8 total; "cheap" costs 0.2 ms; "x" was never measured
    assert free_probes(ranking, costs) == ["free", "free3"]
    assert free_probes(ranking, costs, count=3) == ["free", "free3", "free2"]
    assert free_probes(ranking[:2], costs) == []
    assert free_probes(ranking, None) == []


def test_the_convs_faster_in_float_are_a_set_only_where_they_save_enough() -> None:
    ranking = [_layer("dear", 9.0, 1), _layer("zp3x3", 2.0, 2), _layer("same", 1.0, 3), _layer("zp2", 0.5, 4)]
    costs = IslandCosts(
        "openvino",
        float_ms={"/dear/Conv": 2.0, "/zp3x3/Conv": 0.14, "/same/Conv": 0.30, "/zp2/Conv": 0.15},
        int8_ms={"/dear/Conv": 1.0, "/zp3x3/Conv": 0.37, "/same/Conv": 0.31, "/zp2/Conv": 0.33},
    )
    # 0.41 ms saved of 2.01 ms INT8; "same" is within 10% of its INT8 time: not faster
    assert faster_in_float(ranking, costs) == ("zp3x3", "zp2")
    # the EPYC without AMX: a few hundredths of a millisecond in all is not worth timing
    small = IslandCosts("openvino", {**costs.float_ms, "/zp3x3/Conv": 0.36, "/zp2/Conv": 0.29}, costs.int8_ms)
    assert faster_in_float(ranking, small) == ()
    assert faster_in_float(ranking, None) == ()
