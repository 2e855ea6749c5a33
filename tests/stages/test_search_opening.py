"""The search's opening: free islands before recovery (stages/search_opening.py)."""

from __future__ import annotations

from types import SimpleNamespace

from quantsweep.core.config import IslandOrder
from quantsweep.evaluation.island_costs import IslandCosts
from quantsweep.evaluation.search_moves import MoveKind
from quantsweep.schemes.scheme_records import LayerAssignment, Precision
from quantsweep.stages.search_opening import SearchOpening

ORT = SimpleNamespace(name="ort-cpu", fuses_island_borders=False)
OPENVINO = SimpleNamespace(name="openvino", fuses_island_borders=True)


def _layer(name: str, sensitivity: float) -> LayerAssignment:
    return LayerAssignment(name, f"/{name}/Conv", Precision(None), sensitivity, 1, 1)


class _Measure:
    """Scores by kept set; nothing kept misses the 0.75 target, every single island meets it."""

    def __init__(self, ranking: list[LayerAssignment]) -> None:
        self.scheme_set = SimpleNamespace(
            ranking=ranking, onnx_nodes={a.torch_name: a.onnx_node for a in ranking}
        )
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, kept: tuple[str, ...]) -> float:
        self.calls.append(kept)
        return 0.76 if kept else 0.74


def _opening(
    monkeypatch, ratios: dict[str, float], costs: IslandCosts | None = None
) -> tuple[SearchOpening, list]:
    recoveries: list = []
    opening = SearchOpening(
        context=None,
        candidates_dir=".",
        ranges=None,
        source=None,
        island_order=IslandOrder.GAIN_PER_MS,
        progress=None,
    )
    costs = costs or IslandCosts(
        "ort",
        float_ms={"/a/Conv": 0.05, "/b/Conv": 0.02, "/c/Conv": 19.0},
        int8_ms={"/a/Conv": 0.0, "/b/Conv": 0.0, "/c/Conv": 10.0},
    )
    monkeypatch.setattr(opening, "_island_costs", lambda *a, **k: costs)
    monkeypatch.setattr(opening, "_probe_ratio", lambda backend, measure, kept: ratios[", ".join(kept)])
    monkeypatch.setattr(
        opening, "_recovery_first", lambda scheme_set, start, *a: recoveries.append(1) or start
    )
    return opening, recoveries


def test_a_second_free_island_spares_the_recovery_when_the_first_one_times_slower(
    monkeypatch, tmp_path
) -> None:
    ranking = [_layer("c", 9.0), _layer("a", 3.0), _layer("b", 2.0)]  # "c" is dear: never probed
    measure = _Measure(ranking)
    opening, recoveries = _opening(monkeypatch, {"a": 1.041, "b": 0.99})
    start = opening(ORT, measure.scheme_set, measure, 0.75, tmp_path)
    assert [m.label for m in start.moves] == ["a", "b"]
    assert not recoveries
    assert [(f["layer"], f["met"]) for f in start.free_tried] == [("a", False), ("b", True)]
    assert ("c",) not in measure.calls
    assert start.finalists == [("b",)]  # timed beside what the island search finds


def test_recovery_runs_when_no_free_island_is_free_timed_whole(monkeypatch, tmp_path) -> None:
    ranking = [_layer("a", 3.0), _layer("b", 2.0)]
    measure = _Measure(ranking)
    opening, recoveries = _opening(monkeypatch, {"a": 1.041, "b": 1.05})
    start = opening(ORT, measure.scheme_set, measure, 0.75, tmp_path)
    assert [m.label for m in start.moves] == ["a", "b"]
    assert recoveries == [1]


# OpenVINO on an AMX Xeon: "a" and "b" profile faster in float (zero-point 3x3 convs), "c" does not
FASTER = IslandCosts(
    "openvino",
    float_ms={"/a/Conv": 0.14, "/b/Conv": 0.15, "/c/Conv": 2.0},
    int8_ms={"/a/Conv": 0.37, "/b/Conv": 0.33, "/c/Conv": 1.0},
)


def test_the_convs_faster_in_float_are_a_finalist_where_faster_whole(monkeypatch, tmp_path) -> None:
    ranking = [_layer("c", 9.0), _layer("a", 3.0), _layer("b", 2.0)]
    measure = _Measure(ranking)
    opening, _ = _opening(monkeypatch, {"a, b": 0.94, "a": 1.0}, FASTER)
    start = opening(OPENVINO, measure.scheme_set, measure, 0.75, tmp_path)
    move = start.moves[0]
    assert (move.kind, move.kept, move.score, move.met) == (MoveKind.FASTER_IN_FLOAT, ("a", "b"), 0.76, True)
    assert move.x_nothing_kept == 0.94 and move.per_inference_ms == -0.41
    assert ("a", "b") in start.finalists
    assert ("a", "b") in measure.calls


def test_the_convs_faster_in_float_are_not_scored_where_not_faster_whole(monkeypatch, tmp_path) -> None:
    """OpenVINO where the set's borders cost what the profile saves (YOLOv10m at 640 px on an AMX
    Xeon: 1.025x nothing kept)."""
    ranking = [_layer("c", 9.0), _layer("a", 3.0), _layer("b", 2.0)]
    measure = _Measure(ranking)
    opening, _ = _opening(monkeypatch, {"a, b": 1.05, "a": 1.0}, FASTER)
    start = opening(OPENVINO, measure.scheme_set, measure, 0.75, tmp_path)
    move = start.moves[0]
    assert (move.kind, move.score, move.gain, move.met) == (MoveKind.FASTER_IN_FLOAT, None, None, False)
    assert ("a", "b") not in start.finalists
    assert ("a", "b") not in measure.calls


def test_the_convs_faster_in_float_are_not_tried_where_the_runtime_keeps_their_borders(
    monkeypatch, tmp_path
) -> None:
    """ONNX Runtime: a QuantizeLinear at each float conv's borders; the set is not even timed."""
    ranking = [_layer("c", 9.0), _layer("a", 3.0), _layer("b", 2.0)]
    measure = _Measure(ranking)
    opening, _ = _opening(monkeypatch, {"a": 1.0}, FASTER)  # timing "a, b" would raise KeyError
    start = opening(ORT, measure.scheme_set, measure, 0.75, tmp_path)
    assert MoveKind.FASTER_IN_FLOAT not in [m.kind for m in start.moves]
    assert ("a", "b") not in measure.calls
