from __future__ import annotations

from quantsweep.evaluation.search import search

RANKING = ["a", "b", "c", "d", "e", "f", "g", "h"]


def _measure(needed: set[str], calls: list):
    def measure(kept: tuple[str, ...]) -> float:
        calls.append(kept)
        return 0.5 + 0.1 * len(needed & set(kept))

    return measure


def test_finds_the_needed_layers_and_drops_the_rest() -> None:
    calls: list = []
    # a, b and d are needed; c sits between them in the ranking but is not
    result = search(RANKING, _measure({"a", "b", "d"}, calls), target=0.8)
    assert result.target_met and set(result.kept) == {"a", "b", "d"}
    assert result.score >= 0.8
    assert len(calls) == len(set(calls)) == len(result.evaluations)  # nothing measured twice
    assert len(calls) <= 1 + 3 + 2 + 4


def test_nothing_kept_when_the_target_already_holds() -> None:
    result = search(RANKING, lambda kept: 0.9, target=0.8)
    assert result.kept == () and len(result.evaluations) == 1


def test_unreachable_target_reports_the_closest() -> None:
    result = search(RANKING, _measure({"a", "h"}, []), target=0.95)
    assert not result.target_met
    assert set(result.kept) == set(RANKING) and result.score == 0.7


def test_cost_is_bounded() -> None:
    calls: list = []
    # only keeping "h" (last in the ranking) meets the target: the grow phase needs 5 evaluations
    # ((), a, ab, abcd, all) to get there, so a budget of 3 must stop it short
    result = search(RANKING, _measure({"h"}, calls), target=0.6, max_evals=3)
    assert len(calls) == 3 == len(result.evaluations)
    assert not result.target_met and result.score == 0.5 and "h" not in result.kept
    unbounded = search(RANKING, _measure({"h"}, []), target=0.6, max_evals=24)
    assert unbounded.target_met and unbounded.kept == ("h",)  # the same search with budget succeeds
