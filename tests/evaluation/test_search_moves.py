"""The search's ledger of measured moves, and which island paths the timing pass must weigh."""

from __future__ import annotations

import pytest

from quantsweep.evaluation.search_moves import MoveKind, SearchMove, island_label, paths_to_time, read_moves


def _island(score: float, *, ratio: float | None, recovered: bool = False, met: bool = True) -> SearchMove:
    return SearchMove(
        MoveKind.ISLAND,
        island_label(("model.23.dfl.conv",)),
        score_before=0.750,
        score=score,
        met=met,
        per_inference_ms=0.0,
        seconds=4.0,
        x_nothing_kept=ratio,
        recovered=recovered,
    )


def _recovery(after: float) -> SearchMove:
    return SearchMove(
        MoveKind.RECOVERY,
        "distill",
        score_before=0.750,
        score=after,
        met=False,
        per_inference_ms=0.0,
        seconds=70.0,
    )


def test_a_move_reads_back_as_written_and_a_foreign_field_is_refused() -> None:
    move = _island(0.757, ratio=1.05)
    assert read_moves([move.to_dict()]) == [move]
    assert move.gain == pytest.approx(0.007)
    with pytest.raises(ValueError, match="unknown fields"):
        SearchMove.from_dict({**move.to_dict(), "speedup": 2.0})


def test_recovery_is_free_per_inference_and_an_island_only_when_timed_within_two_percent() -> None:
    assert _recovery(0.752).free
    assert _island(0.757, ratio=1.015).free
    assert not _island(0.757, ratio=1.05).free
    assert not _island(0.757, ratio=None).free  # priced by the profile only: not known to be free


def test_an_island_that_met_for_a_cost_is_timed_against_recovery_that_gained() -> None:
    costly = _island(0.757, ratio=1.05)
    # recovery gained: the island path (weights as quantized) and the recovered path are both timed
    assert paths_to_time([costly, _recovery(0.753)]) == [costly]
    # recovery gained nothing: the islands were searched on the same weights, nothing extra to time
    assert paths_to_time([costly, _recovery(0.750)]) == []
    # a free island, one short of the target, or one on recovered weights is no separate path
    free, short = _island(0.757, ratio=1.01), _island(0.749, ratio=None, met=False)
    recovered = _island(0.757, ratio=1.05, recovered=True)
    assert paths_to_time([free, short, recovered, _recovery(0.753)]) == []
