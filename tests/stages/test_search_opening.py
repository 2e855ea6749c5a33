"""The search's opening: free islands before recovery (stages/search_opening.py)."""

from __future__ import annotations

from types import SimpleNamespace

from quantsweep.core.config import IslandOrder
from quantsweep.evaluation.island_costs import IslandCosts
from quantsweep.schemes.scheme_records import LayerAssignment, Precision
from quantsweep.stages.search_opening import SearchOpening


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


def _opening(monkeypatch, ratios: dict[str, float]) -> tuple[SearchOpening, list]:
    recoveries: list = []
    opening = SearchOpening(
        context=None,
        candidates_dir=".",
        ranges=None,
        source=None,
        island_order=IslandOrder.GAIN_PER_MS,
        progress=None,
    )
    costs = IslandCosts(
        "ort",
        float_ms={"/a/Conv": 0.05, "/b/Conv": 0.02, "/c/Conv": 19.0},
        int8_ms={"/a/Conv": 0.0, "/b/Conv": 0.0, "/c/Conv": 10.0},
    )
    monkeypatch.setattr(opening, "_island_costs", lambda *a, **k: costs)
    monkeypatch.setattr(opening, "_probe_ratio", lambda backend, measure, probe: ratios[probe])
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
    start = opening(SimpleNamespace(name="ort-cpu"), measure.scheme_set, measure, 0.75, tmp_path)
    assert [m.label for m in start.moves] == ["a", "b"]
    assert not recoveries
    assert [(f["layer"], f["met"]) for f in start.free_tried] == [("a", False), ("b", True)]
    assert ("c",) not in measure.calls


def test_recovery_runs_when_no_free_island_is_free_timed_whole(monkeypatch, tmp_path) -> None:
    ranking = [_layer("a", 3.0), _layer("b", 2.0)]
    measure = _Measure(ranking)
    opening, recoveries = _opening(monkeypatch, {"a": 1.041, "b": 1.05})
    start = opening(SimpleNamespace(name="ort-cpu"), measure.scheme_set, measure, 0.75, tmp_path)
    assert [m.label for m in start.moves] == ["a", "b"]
    assert recoveries == [1]
