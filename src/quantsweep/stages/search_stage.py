"""The search stage: per target, the kept sets that meet the accuracy target, measured on real artifacts.

Every step writes the scheme in the target's placement and scores it on the target's runtime.
The passing kept sets with the fewest layers become models of their own (``search_k<N>``), so the
evaluate stage's timing pass measures them beside every other candidate and the recommendation
can pick the fastest (speed targets) or smallest (size) of all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch

from quantsweep.core import layout
from quantsweep.core.config import IslandOrder
from quantsweep.core.layout import eval_dir_of_results
from quantsweep.core.records import JsonLines, read_json, write_json
from quantsweep.evaluation.island_costs import (
    IslandCosts,
    island_order,
)
from quantsweep.evaluation.scoring import Accuracy
from quantsweep.evaluation.search import SearchResult, search
from quantsweep.evaluation.search_moves import MoveKind, SearchMove, island_label, paths_to_time
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.candidates import FP32_FILE
from quantsweep.onnx_graph.inspect import average_weight_bits
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.producer_quant import ProducerQuant, read_producers
from quantsweep.quant.scheme import WEIGHTS_DIR, load_records, records_path
from quantsweep.schemes.scheme_records import Policy
from quantsweep.stages.common import ProgressFactory, model_source, no_progress
from quantsweep.stages.eval_context import EvalContext, EvalRequest
from quantsweep.stages.eval_records import ResultStore
from quantsweep.stages.schemes_stage import SchemeSet, read_scheme_set
from quantsweep.stages.search_opening import SearchOpening, SearchStart
from quantsweep.targets import Backend, Objective
from quantsweep.targets.base import conv_kinds

LOG = logging.getLogger(__name__)
FINALISTS = {Objective.SPEED: 3, Objective.SIZE: 1}  # passing kept sets timed beside the candidates


@dataclass(frozen=True)
class SearchRequest:
    """The search's cost bound (the accuracy target is the evaluate request's)."""

    max_evals: int = 24
    island_order: IslandOrder = IslandOrder.GAIN_PER_MS


class _Measure:
    """Writes a kept set in the target's placement, scores it on its runtime, logs every score."""

    def __init__(
        self,
        backend: Backend,
        scheme_set: SchemeSet,
        ranges: RangeCache,
        context,
        log,
        *,
        records,
        source,
        producers: Sequence[ProducerQuant] = (),
    ):
        self.backend, self.scheme_set, self.ranges = backend, scheme_set, ranges
        self.producers = producers  # tensors quantized where made, as materialize wrote them
        self.source = source  # the checkpoint and calibration images, for targets that need them
        self.context, self.log = context, log
        self.records = records  # format name -> {layer: quantizer record}, from the materialize stage
        self.kinds = conv_kinds(ranges.model)
        # every kept set scored so far (a resumed search's log, candidates already scored): a trial
        # or finalist with one of these kept sets is not scored again
        self.accuracies = {
            tuple(sorted(r["kept"])): Accuracy(**r["accuracy"]) for r in log.read() if "accuracy" in r
        }

    def with_records(self, records, log) -> _Measure:
        """The same measure over other quantizer records (recovered ones), logging to ``log``."""
        return _Measure(
            self.backend,
            self.scheme_set,
            self.ranges,
            self.context,
            log,
            records=records,
            source=self.source,
            producers=self.producers,
        )

    def model(self, kept: tuple[str, ...]) -> onnx.ModelProto:
        """The kept set as the target writes it: adapted to what it runs (as materialize does), checked."""
        keep = set(kept)
        plan = {
            a.onnx_node: self.scheme_set.high if a.torch_name in keep else self.scheme_set.low
            for a in self.scheme_set.ranking
        }
        plan = self.backend.adapt_plan(plan, self.kinds)
        self.backend.check_plan(plan, self.kinds)
        weights = {}
        for a in self.scheme_set.ranking:
            fmt = plan[a.onnx_node].as_format()
            record = None if fmt is None else self.records.get(fmt.name, {}).get(a.torch_name)
            if record is not None:
                weights[a.onnx_node] = record
        return self.backend.write(
            self.ranges.model, plan, ranges=self.ranges, weights=weights, producers=self.producers
        )

    def __call__(self, kept: tuple[str, ...]) -> float:
        key = tuple(sorted(kept))
        if key not in self.accuracies:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.backend.save(self.model(kept), Path(tmp) / "trial.onnx", source=self.source)
                acc = self.context.score(self.backend, path)
            self.accuracies[key] = acc
            self.log.append(
                {"kept": list(key), "score": acc.value(self.context.metric), "accuracy": acc.to_dict()}
            )
        return self.accuracies[key].value(self.context.metric)


def _islands_summary(order: IslandOrder, costs: IslandCosts | None, kept, measure: _Measure) -> dict:
    """How the islands were ordered and what the kept ones cost by the runtime's profile."""
    summary: dict = {"order": order.value if costs is not None else IslandOrder.RANK.value}
    if costs is not None:
        nodes = measure.scheme_set.onnx_nodes
        summary["runtime"] = costs.runtime
        summary["kept_cost_ms"] = {name: round(costs.cost(nodes[name]), 4) for name in kept}
        summary["int8_ms"] = round(sum(costs.int8_ms.values()), 3)
    return summary


def recorded_ranges(candidates_dir: Path, images: torch.Tensor) -> RangeCache:
    """The materialize run's tensor ranges, extended from the calibration images if a tensor is new."""
    cache = RangeCache(onnx.load(str(candidates_dir / FP32_FILE)), images)
    recorded = read_json(candidates_dir / "tensor_ranges.json", "tensor_ranges")["ranges"]
    cache.found.update({name: ActRange.from_dict(value) for name, value in recorded.items()})
    return cache


def kept_set_writer(backend: Backend, *, candidates_dir: Path, schemes_dir: Path):
    """``write(kept, path) -> artifact``: a kept set (Torch names) written in ``backend``'s placement
    from a finished run's candidates and schemes exactly as the search writes its trials, for
    benchmarks that time kept sets (benchmarks/island_groups.py)."""
    scheme_set = read_scheme_set(Path(schemes_dir))
    source = model_source(scheme_set.sweep_config, Path(candidates_dir) / FP32_FILE)
    ranges = recorded_ranges(Path(candidates_dir), source.images)
    measure = _run_measure(
        backend,
        scheme_set,
        ranges,
        candidates_dir=Path(candidates_dir),
        source=source,
        context=None,  # no scoring context: the writer only writes
        log=JsonLines(Path(os.devnull)),  # an empty log that nothing appends to
    )

    def write(kept: tuple[str, ...], path: Path) -> Path:
        return backend.save(measure.model(kept), path, source=source)

    return write


def _run_measure(
    backend: Backend, scheme_set: SchemeSet, ranges: RangeCache, *, candidates_dir: Path, source, context, log
) -> _Measure:
    """A measure of kept sets over a finished materialize run's quantizer records and producers."""
    return _Measure(
        backend,
        scheme_set,
        ranges,
        context,
        log,
        records=_records(candidates_dir, scheme_set),
        source=source,
        producers=read_producers(candidates_dir),
    )


def _records(candidates_dir: Path, scheme_set: SchemeSet) -> dict[str, dict]:
    """The materialize stage's quantizer records of the schemes' two precisions (none: round to nearest)."""
    found = {}
    for precision in (scheme_set.low, scheme_set.high):
        fmt = precision.as_format()
        path = None if fmt is None else records_path(candidates_dir / WEIGHTS_DIR, fmt)
        if path is not None and path.is_file():
            found[fmt.name] = load_records(path)
    return found


class TargetSearch:
    """The search, run by the evaluate stage for each target before its timing pass."""

    def __init__(self, request: SearchRequest, *, eval_request: EvalRequest, context: EvalContext, index):
        self.request, self.eval_request, self.context, self.index = request, eval_request, context, index
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
        start = self._opening(backend, scheme_set, measure, threshold, search_dir)
        result, order, seconds = self._search_islands(backend, start, threshold)
        finalists = self._finalists(
            backend,
            start.measure,
            store,
            search_dir,
            passing=[
                *(tuple(e["kept"]) for e in result.evaluations if e["score"] >= result.target),
                *start.finalists,
            ],
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
                "free_first": start.free_first,
            },
            "moves": [m.to_dict() for m in moves],
        }
        write_json(search_dir / "search.json", "scheme_search", summary)
        return summary

    def _measure(self, backend: Backend, scheme_set: SchemeSet, store: ResultStore, *, log) -> _Measure:
        """The target's measure of kept sets, knowing the scores of the top-K schemes already scored."""
        if self._ranges is None:
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
        measure = _run_measure(
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
            cost = None if start.costs is None else sum(start.costs.cost(nodes[n]) for n in result.kept)
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

    def _finalists(
        self,
        backend: Backend,
        measure: _Measure,
        store: ResultStore,
        search_dir: Path,
        *,
        passing: Sequence[tuple[str, ...]],
        recovered: bool,
        order: list[str],
        costs: IslandCosts | None,
    ) -> dict[tuple[str, ...], str]:
        """The cheapest passing kept sets (by the islands' estimated time, else fewest kept) written as
        models the timing pass measures: kept set -> model name."""
        nodes = measure.scheme_set.onnx_nodes

        def cheapest(kept: tuple[str, ...]) -> tuple:
            estimate = len(kept) if costs is None else sum(costs.cost(nodes[n]) for n in kept)
            return (estimate, len(kept), [order.index(n) for n in kept])

        passing = sorted(set(passing), key=cheapest)[: FINALISTS[backend.objective]]
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
                    "file": str(path),
                    "policy": Policy.SEARCH,
                    "kept": len(kept),
                    "kept_layers": list(kept),
                    "size_bytes": backend.artifact_bytes(path),
                    "avg_weight_bits": average_weight_bits(model),
                    "sha256_16": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                    "recovered": recovered,
                }
                store.write_result(record, acc)
            names[kept] = name
        return names
