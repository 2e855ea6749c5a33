"""Search for the fewest high-precision layers that meet an accuracy target, re-measuring as it goes.

Single-layer scores do not add up (several individually harmless layers can together break the
model), so every step is measured on the real artifact. The order comes from the ranking: grow the
kept set along it by doubling, bisect to the smallest passing prefix, then try dropping each kept
layer. Cost: at most ``max_evals`` measurements, about 2*log2(K) + K + 1 in practice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Measure = Callable[[tuple[str, ...]], float]


@dataclass
class SearchResult:
    """The best kept set found and every measurement taken."""

    kept: tuple[str, ...]
    score: float
    target: float
    target_met: bool
    evaluations: list[dict] = field(default_factory=list)


class _Budgeted:
    def __init__(self, measure: Measure, max_evals: int) -> None:
        self.measure, self.max_evals = measure, max_evals
        self.cache: dict[frozenset[str], float] = {}
        self.log: list[dict] = []

    def __call__(self, kept: Sequence[str], *, step: str) -> float | None:
        key = frozenset(kept)
        if key not in self.cache:
            if len(self.log) >= self.max_evals:
                return None
            self.cache[key] = self.measure(tuple(kept))
            self.log.append({"step": step, "kept": list(kept), "score": self.cache[key]})
        return self.cache[key]


def search(ranking: Sequence[str], measure: Measure, *, target: float, max_evals: int = 24) -> SearchResult:
    """Fewest layers of ``ranking`` (most sensitive first) to keep so that ``measure(kept) >= target``."""
    run = _Budgeted(measure, max_evals)
    score0 = run((), step="none kept")
    if score0 is not None and score0 >= target:
        return SearchResult((), score0, target, True, run.log)
    low, high, k = 0, None, 1
    while high is None and k <= len(ranking):
        score = run(ranking[:k], step="grow")
        if score is None:
            break
        if score >= target:
            high = k
        else:
            low, k = k, min(2 * k, len(ranking)) if k < len(ranking) else k + 1
    if high is None:
        best = max(run.cache.items(), key=lambda item: item[1])
        kept = tuple(name for name in ranking if name in best[0])
        return SearchResult(kept, best[1], target, False, run.log)
    while high - low > 1:
        mid = (low + high) // 2
        score = run(ranking[:mid], step="bisect")
        if score is None:
            break
        low, high = (low, mid) if score >= target else (mid, high)
    kept = list(ranking[:high])
    for name in reversed(ranking[:high]):  # least sensitive first
        trial = [n for n in kept if n != name]
        score = run(trial, step=f"drop {name}")
        if score is not None and score >= target:
            kept = trial
    final = tuple(kept)
    return SearchResult(final, run.cache[frozenset(final)], target, True, run.log)
