"""The search stage: per target, the kept sets that meet the accuracy target, measured on real artifacts.

Every step writes the scheme in the target's placement and scores it on the target's runtime.
The passing kept sets with the fewest layers become models of their own (``search_k<N>``), so the
evaluate stage's timing pass measures them beside every other candidate and the recommendation
can pick the fastest (speed targets) or smallest (size) of all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from quantsweep.core import layout
from quantsweep.core.config import IslandOrder
from quantsweep.core.layout import eval_dir_of_results
from quantsweep.core.records import JsonLines, write_json
from quantsweep.evaluation.island_costs import (
    IslandCosts,
    island_order,
)
from quantsweep.evaluation.scoring import Accuracy
from quantsweep.evaluation.search import SearchResult, search
from quantsweep.evaluation.search_moves import MoveKind, SearchMove, island_label, paths_to_time
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.candidates import FP32_FILE
from quantsweep.schemes.scheme_records import Policy
from quantsweep.stages.common import ProgressFactory, model_source, no_progress
from quantsweep.stages.eval_context import EvalContext, EvalRequest
from quantsweep.stages.eval_records import ResultStore
from quantsweep.stages.eval_writes import RESULT_FIELDS, EvalWrites, file_fields
from quantsweep.stages.kept_sets import KeptSetMeasure, recorded_ranges, run_measure
from quantsweep.stages.schemes_stage import SchemeSet, read_scheme_set
from quantsweep.stages.search_opening import SearchOpening, SearchStart
from quantsweep.targets import Backend, Objective

LOG = logging.getLogger(__name__)
FINALISTS = {Objective.SPEED: 3, Objective.SIZE: 1}  # passing kept sets timed beside the candidates


@dataclass(frozen=True)
class SearchRequest:
    """The search's cost bound (the accuracy target is the evaluate request's)."""

    max_evals: int = 24
    island_order: IslandOrder = IslandOrder.GAIN_PER_MS


def _islands_summary(order: IslandOrder, costs: IslandCosts | None, kept, measure: KeptSetMeasure) -> dict:
    """How the islands were ordered and what the kept ones cost by the runtime's profile."""
    summary: dict = {"order": order.value if costs is not None else IslandOrder.RANK.value}
    if costs is not None:
        nodes = measure.scheme_set.onnx_nodes
        summary["runtime"] = costs.runtime
        summary["kept_cost_ms"] = {name: round(costs.cost(nodes[name]), 4) for name in kept}
        summary["int8_ms"] = round(sum(costs.int8_ms.values()), 3)
    return summary


class TargetSearch:
    """The search, run by the evaluate stage for each target before its timing pass."""

    def __init__(
        self,
        request: SearchRequest,
        *,
        eval_request: EvalRequest,
        context: EvalContext,
        index,
        writes: EvalWrites | None = None,
    ):
        self.request, self.eval_request, self.context, self.index = request, eval_request, context, index
        self.writes = writes  # checks each finalist it writes as materialize checks its artifacts
        self.candidates_dir = Path(eval_request.candidates_dir)
        self.progress: ProgressFactory = no_progress
        self._ranges: RangeCache | None = None  # one FP32 graph and calibration batch for every target
        self._source = None
        self._opening: SearchOpening | None = None  # the moves before islands, made with the ranges

    def __call__(self, backend: Backend, store: ResultStore) -> dict:
        scheme_set = read_scheme_set(Path(self.index.targets[backend.name].schemes_dir))
        search_dir = layout.search_dir(eval_dir_of_results(store.directory), backend.name)
        measure = self._measure(backend, scheme_set, store, log=JsonLines(search_dir / "evaluations.jsonl"))
        reference = self.context.reference_score
        threshold = self.eval_request.accuracy_target.threshold(reference)
        k0 = store.all().get("k0")  # nothing kept as materialize wrote it: profiled as it is
        nothing_kept = Path(k0["file"]) if k0 and k0.get("policy") == Policy.TOP_K else None
        start = self._opening(backend, scheme_set, measure, threshold, search_dir, nothing_kept=nothing_kept)
        result, order, seconds = self._search_islands(backend, start, threshold)
        finalists = self._finalists(
            backend,
            start.measure,
            store,
            search_dir,
            passing=[tuple(e["kept"]) for e in result.evaluations if e["score"] >= result.target],
            chosen=start.finalists,
            recovered=start.recovered,
            order=order,
            costs=start.costs,
        )
        moves = self._ledger(start, result, finalists, seconds=seconds, store=store, search_dir=search_dir)
        summary = {
            "target": backend.name,
            "reference": reference,
            "threshold": threshold,
            "accuracy_target": self.eval_request.accuracy_target.to_dict(),
            "max_evals": self.request.max_evals,
            **asdict(result),
            "low": scheme_set.low.label,
            "high": scheme_set.high.label,
            "finalists": list(
                dict.fromkeys([*finalists.values(), *(m.finalist for m in moves if m.finalist)])
            ),
            "recovery": None if start.recovery is None else start.recovery.to_dict(),
            "islands": {
                **_islands_summary(self.request.island_order, start.costs, result.kept, start.measure),
                "free_tried": start.free_tried,
            },
            "moves": [m.to_dict() for m in moves],
        }
        write_json(search_dir / "search.json", "scheme_search", summary)
        return summary

    def _measure(self, backend: Backend, scheme_set: SchemeSet, store: ResultStore, *, log) -> KeptSetMeasure:
        """The target's measure of kept sets, knowing the scores of the top-K schemes already scored."""
        if self._ranges is None:
            if self.writes is not None:  # the writer's, loaded once for both
                self._source, self._ranges = self.writes.source, self.writes.ranges
            else:
                self._source = model_source(self.context.config, self.candidates_dir / FP32_FILE)
                self._ranges = recorded_ranges(self.candidates_dir, self._source.images)
            self._opening = SearchOpening(
                context=self.context,
                candidates_dir=self.candidates_dir,
                ranges=self._ranges,
                source=self._source,
                island_order=self.request.island_order,
                progress=self.progress,
            )
        measure = run_measure(
            backend,
            scheme_set,
            self._ranges,
            candidates_dir=self.candidates_dir,
            source=self._source,
            context=self.context,
            log=log,
        )
        # a top-K scheme already scored is the trial of its kept set (K=0: nothing kept), written
        # the same way from the same records: the search reads its score instead of scoring it again
        for record in store.all().values():
            if record.get("policy") == Policy.TOP_K and record.get("accuracy"):
                kept = tuple(sorted(record.get("kept_layers") or ()))
                measure.accuracies.setdefault(kept, Accuracy(**record["accuracy"]))
        return measure

    def _search_islands(
        self, backend: Backend, start: SearchStart, threshold: float
    ) -> tuple[SearchResult, list[str], float]:
        """The fewest float islands on ``start``'s measure; the island order; the seconds it took."""
        order = [
            a.torch_name
            for a in island_order(
                start.measure.scheme_set.ranking, start.costs, order=self.request.island_order
            )
        ]
        started = time.perf_counter()
        with self.progress(self.request.max_evals, f"search {backend.name}") as step:

            def measured(kept: tuple[str, ...]) -> float:
                score = start.measure(kept)
                step(f"{len(kept)} kept: {score:.4f}")
                return score

            result = search(order, measured, target=threshold, max_evals=self.request.max_evals)
        return result, order, time.perf_counter() - started

    def _ledger(
        self, start: SearchStart, result: SearchResult, finalists: dict, *, seconds: float, store, search_dir
    ) -> list[SearchMove]:
        """The measured moves (search_moves.py) with the island search's own; an island that met the
        target alone for a cost per inference while recovery ran becomes a finalist too, so the timing
        pass weighs it against the recovered path."""
        named = {} if start.recovered else finalists  # the finalists' records are the moves' records
        moves = [  # an island move whose kept set became a finalist (the free island) names it
            dataclasses.replace(m, finalist=named[m.kept]) if m.kept and m.kept in named else m
            for m in start.moves
        ]
        if result.kept and result.target_met:
            nodes = start.measure.scheme_set.onnx_nodes
            cost = None if start.costs is None else start.costs.cost_of(result.kept, nodes)
            moves.append(
                SearchMove(
                    MoveKind.ISLAND,
                    island_label(result.kept),
                    score_before=start.measure(()),
                    score=result.score,
                    met=True,
                    per_inference_ms=None if cost is None else round(cost, 4),
                    seconds=round(seconds, 1),
                    recovered=start.recovered,
                    finalist=finalists.get(tuple(result.kept)),
                    outcome="the fewest kept that meet the target",
                )
            )
        for move in paths_to_time(moves):
            kept = move.kept
            names = self._finalists(
                start.backend,
                start.unrecovered,
                store,
                search_dir,
                passing=[kept],
                recovered=False,
                order=list(kept),
                costs=start.costs,
            )
            outcome = f"{move.outcome}; timed against the recovered path"
            moves[moves.index(move)] = dataclasses.replace(move, finalist=names[kept], outcome=outcome)
        return moves

    def _verdict(self, backend: Backend, path: Path, *, measure: KeptSetMeasure, kept) -> dict:
        """The finalist's verify record's fields for its result (none without a writer to check it)."""
        if self.writes is None:
            return {}
        checked = self.writes.check(backend, path, measure=measure, kept=kept)
        return {key: checked.get(key) for key in RESULT_FIELDS}

    def _finalists(
        self,
        backend: Backend,
        measure: KeptSetMeasure,
        store: ResultStore,
        search_dir: Path,
        *,
        passing: Sequence[tuple[str, ...]],
        recovered: bool,
        order: list[str],
        costs: IslandCosts | None,
        chosen: Sequence[tuple[str, ...]] = (),
    ) -> dict[tuple[str, ...], str]:
        """The cheapest passing kept sets (by the islands' estimated time, else fewest kept), and every
        ``chosen`` one (the opening's finalists, timed whole or more accurate for free), written as
        models the timing pass measures: kept set -> model name."""
        nodes = measure.scheme_set.onnx_nodes

        def cheapest(kept: tuple[str, ...]) -> tuple:
            estimate = len(kept) if costs is None else costs.cost_of(kept, nodes)
            return (estimate, len(kept), [order.index(n) for n in kept])

        chosen = list(dict.fromkeys(chosen))
        searched = sorted(set(passing) - set(chosen), key=cheapest)[: FINALISTS[backend.objective]]
        passing = [*chosen, *searched]
        # a kept set some candidate already has (K=0 is the k0 scheme) is that candidate, timed as it
        # is; not with recovered records, which no candidate carries
        existing = {
            frozenset(r.get("kept_layers") or ()): name
            for name, r in store.all().items()
            if Policy(r["policy"]).is_scheme and not recovered
        }
        suffix = "_recovered" if recovered else ""
        names: dict[tuple[str, ...], str] = {}
        for kept in passing:
            if frozenset(kept) in existing:
                names[kept] = existing[frozenset(kept)]
                continue
            same = sum(n.startswith(f"search_k{len(kept)}{suffix}") for n in names.values())
            name = f"search_k{len(kept)}{suffix}" + (f"_{same + 1}" if same else "")
            if not store.has(name):
                model = measure.model(kept)
                path = backend.save(model, search_dir / f"{name}.onnx", source=measure.source)
                acc = measure.accuracies.get(tuple(sorted(kept))) or self.context.score(backend, path)
                record = {
                    "name": name,
                    "policy": Policy.SEARCH,
                    "kept": len(kept),
                    "kept_layers": list(kept),
                    **file_fields(backend, model, path),
                    "recovered": recovered,
                    **self._verdict(backend, path, measure=measure, kept=kept),
                }
                store.write_result(record, acc)
            names[kept] = name
        return names
