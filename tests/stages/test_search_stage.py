"""The search's finalists (stages/search_stage.py)."""

from __future__ import annotations

from types import SimpleNamespace

from quantsweep.stages.search_stage import FINALISTS, TargetSearch
from quantsweep.targets import Objective


def test_the_openings_finalists_are_timed_whatever_the_island_search_finds(tmp_path) -> None:
    """YOLOv10s on ONNX Runtime (2026-12-07): a free island met the target timed whole, then the
    island search's passing sets, estimated cheaper, filled every finalist slot and the free island
    was never timed. The opening's finalists are kept beside the cheapest the search found."""
    search = TargetSearch.__new__(TargetSearch)
    measure = SimpleNamespace(scheme_set=SimpleNamespace(onnx_nodes={}))
    store = SimpleNamespace(all=dict, has=lambda name: True)  # every model already written
    backend = SimpleNamespace(objective=Objective.SPEED)
    passing = [("a",), ("b",), ("c",), ("d",), ("a", "b")]
    names = search._finalists(
        backend,
        measure,
        store,
        tmp_path,
        passing=passing,
        recovered=False,
        order=["a", "b", "c", "d", "free"],
        costs=None,  # fewest kept first, then the order
        chosen=[("free", "a")],
    )
    assert list(names) == [("free", "a"), ("a",), ("b",), ("c",)]
    assert len(names) == 1 + FINALISTS[Objective.SPEED]
    assert names[("free", "a")] == "search_k2" and names[("a",)] == "search_k1"
