"""The search's moves before its island search, on one target (search_moves.py).

The float islands are priced on the runtime (island_costs.py). Where the runtime profiles enough
convs faster in float than in INT8 (OpenVINO's zero-point 3x3 convs on an AMX Xeon), those convs
kept float together are timed whole against nothing kept, and scored and made a finalist only
where faster. When nothing-kept misses the accuracy target, the islands the runtime prices at
nothing are tried first (one evaluation each, timed whole where one meets the target), and
recovery (search_recovery.py, minutes) runs only if none of them meets the target at no inference
cost. Every move is recorded as measured.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from quantsweep.core.config import IslandOrder
from quantsweep.core.records import JsonLines, read_json, write_json
from quantsweep.evaluation.island_costs import (
    IslandCosts,
    conv_units,
    faster_in_float,
    free_probes,
    measure_island_costs,
    whole_model_ratio,
)
from quantsweep.evaluation.search_moves import MoveKind, SearchMove, island_label
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.candidates import FP32_FILE
from quantsweep.quant.distill import DISTILL_CHECKS
from quantsweep.stages.common import ProgressFactory
from quantsweep.stages.schemes_stage import SchemeSet
from quantsweep.stages.search_recovery import AUTO_METHOD, RecoveredRecords, RecoveryOutcome
from quantsweep.targets import Backend, Objective
from quantsweep.targets.timing import SAME_TIME_SHARE

if TYPE_CHECKING:
    from quantsweep.stages.kept_sets import KeptSetMeasure as Measure

LOG = logging.getLogger(__name__)
ISLAND_COSTS_FILE, ISLAND_COSTS_KIND = "island_costs.json", "island_costs"


@dataclass
class SearchStart:
    """Where the island search starts on one target: the moves made before it (search_moves.py)."""

    backend: Backend
    measure: Measure  # what the islands are searched with (recovered records, where recovery gained)
    unrecovered: Measure  # the records as materialize quantized them
    costs: IslandCosts | None = None
    recovery: RecoveryOutcome | None = None
    free_tried: list[dict] = field(default_factory=list)  # the free islands tried, in order
    moves: list[SearchMove] = field(default_factory=list)
    finalists: list[tuple[str, ...]] = field(default_factory=list)  # timed whatever the search finds

    @property
    def recovered(self) -> bool:
        """The islands are searched on recovered records."""
        return self.recovery is not None and self.recovery.used


class SearchOpening:
    """The moves before the island search, per target; the recovered records are made once per run."""

    def __init__(
        self,
        *,
        context,
        candidates_dir: Path,
        ranges: RangeCache,
        source,
        island_order: IslandOrder,
        progress: ProgressFactory,
    ) -> None:
        self.context, self.candidates_dir = context, Path(candidates_dir)
        self._ranges, self._source = ranges, source
        self.island_order, self.progress = island_order, progress
        self._recovered: RecoveredRecords | None = None

    def __call__(
        self,
        backend: Backend,
        scheme_set: SchemeSet,
        measure: Measure,
        threshold: float,
        search_dir: Path,
        *,
        nothing_kept: Path | None = None,
    ) -> SearchStart:
        """Price the islands of a speed target, then try the islands the runtime prices at nothing
        (island_costs.free_probes; one evaluation each). Where nothing-kept misses the target, they
        go before recovery (minutes), which is not run if one alone meets the target at no inference
        cost, timed whole; where nothing-kept meets it, the first is a finalist if it is more
        accurate, recommended only if the timing pass times it as fast (search_moves.py).
        ``nothing_kept``: the target's K=0 artifact, where materialize wrote it (else written here)."""
        start = SearchStart(backend, measure, unrecovered=measure)
        if self.island_order is not IslandOrder.GAIN_PER_MS:
            return self._recovery_first(scheme_set, start, threshold, search_dir)
        start.costs = self._island_costs(backend, measure, search_dir, nothing_kept=nothing_kept)
        faster = faster_in_float(scheme_set.ranking, start.costs) if backend.fuses_island_borders else ()
        if faster:
            self._faster_in_float(start, faster, threshold)
        probes = free_probes(scheme_set.ranking, start.costs)
        if probes and measure(()) >= threshold:
            self._probe(start, probes[0], threshold)  # a finalist where it gains
            return start
        for probe in probes:
            if self._probe(start, probe, threshold):
                LOG.info("%s: %s kept float alone meets the target; no recovery", backend.name, probe)
                return start
        return self._recovery_first(scheme_set, start, threshold, search_dir)

    def _probe(self, start: SearchStart, probe: str, threshold: float) -> bool:
        """Score the free island, record the move; whether it is taken. Where nothing-kept misses
        the target it is wanted if it meets the target, and taken if, timed whole here, it costs no
        inference time (recovery is then not run); where nothing-kept meets it, it is wanted and taken
        as a finalist if it scores higher: the timing pass times it beside nothing kept and the
        recommendation prefers the more accurate of models that run equally fast."""
        started, measure = time.perf_counter(), start.measure
        score, before = measure((probe,)), measure(())
        gain_only = before >= threshold
        wanted = score > before if gain_only else score >= threshold
        # where nothing kept meets the target the evaluate stage's timing pass times the island
        # beside nothing kept anyway, and the recommendation takes it only if it times the same
        # (recommend._same_time): a pass of its own here would only repeat that
        timed_here = wanted and not gain_only
        ratio = self._probe_ratio(start.backend, measure, (probe,)) if timed_here else None
        move = SearchMove(
            MoveKind.ISLAND,
            probe,
            score_before=before,
            score=score,
            met=score >= threshold,
            per_inference_ms=round(start.costs.cost(measure.scheme_set.onnx_nodes[probe]), 4),
            seconds=round(time.perf_counter() - started, 1),
            x_nothing_kept=ratio,
        )
        taken = wanted and (gain_only or move.free)
        start.free_tried.append({"layer": probe, "score": score, "met": taken, "x_nothing_kept": ratio})
        if taken:  # timed beside whatever the island search finds: it met the target first
            start.finalists.append((probe,))
        if taken and gain_only:
            outcome = (
                "more accurate than nothing kept: timed as a finalist beside it, recommended only "
                "if it times the same"
            )
        elif taken:
            outcome = "taken: meets the target at no inference cost; recovery not run; a finalist"
        elif wanted:
            what = "more accurate than nothing kept" if gain_only else "meets the target"
            outcome = f"{what} but runs at {ratio:.3f}x nothing kept"
        else:
            outcome = "no more accurate than nothing kept" if gain_only else "short of the target"
        start.moves.append(dataclasses.replace(move, outcome=outcome))
        return taken

    def _faster_in_float(self, start: SearchStart, kept: tuple[str, ...], threshold: float) -> None:
        """Time the convs the runtime profiles faster in float, kept float together, whole against
        nothing kept; where faster, score them and make them a finalist if they meet the target (the
        timing pass then weighs them against the rest). Record the move either way."""
        started, measure = time.perf_counter(), start.measure
        ratio = self._probe_ratio(start.backend, measure, kept)
        faster = ratio < 1.0 - SAME_TIME_SHARE
        score = measure(kept) if faster else None
        met = score is not None and score >= threshold
        if met:
            start.finalists.append(kept)
            outcome = "faster whole than nothing kept and meets the target: timed as a finalist"
        elif faster:
            outcome = "faster whole than nothing kept but short of the target"
        else:
            outcome = "not faster whole than nothing kept (its borders cost what the profile saves)"
        start.moves.append(
            SearchMove(
                MoveKind.FASTER_IN_FLOAT,
                island_label(kept),
                score_before=measure(()),
                score=score,
                met=met,
                per_inference_ms=round(start.costs.cost_of(kept, measure.scheme_set.onnx_nodes), 4),
                seconds=round(time.perf_counter() - started, 1),
                x_nothing_kept=ratio,
                outcome=outcome,
            )
        )

    def _probe_ratio(self, backend: Backend, measure: Measure, kept: tuple[str, ...]) -> float:
        """The whole-model time of ``kept`` in float over nothing-kept's on ``backend``'s runtime."""
        with tempfile.TemporaryDirectory() as tmp:
            paths = [
                backend.save(measure.model(layers), Path(tmp) / f"{name}.onnx", source=measure.source)
                for name, layers in (("k0", ()), ("island", kept))
            ]
            ratio = whole_model_ratio(
                backend, int8_path=paths[0], island_path=paths[1], image=self._source.images[:1].numpy()
            )
        LOG.info("%s: %d conv(s) kept float run at %.3fx nothing kept", backend.name, len(kept), ratio)
        return ratio

    def _recovery_first(
        self, scheme_set: SchemeSet, start: SearchStart, threshold: float, search_dir: Path
    ) -> SearchStart:
        """Recovery before islands (search_recovery.py): ``start`` with the measure the islands are
        searched with, and the recovery move recorded."""
        backend, measure = start.backend, start.measure
        if self._recovered is None:
            self._recovered = RecoveredRecords(
                self.context.config, candidates_dir=self.candidates_dir, root=search_dir.parent
            )
        if not self._recovered.needed(backend) or (before := measure(())) >= threshold:
            return start
        # the distillation's checkpoints (DISTILL_CHECKS), then nothing-kept scored again
        started = time.perf_counter()
        with self.progress(DISTILL_CHECKS + 1, f"recover {backend.name}") as step:
            records, seconds = self._recovered.for_target(
                backend, scheme_set, measure.records, images=self._source.images, progress=step
            )
            log = JsonLines(search_dir / "evaluations_recovered.jsonl")
            recovered = measure.with_records(records, log)
            after = recovered(())
            step(f"nothing kept: {before:.4f} -> {after:.4f}")
        start.recovery = RecoveryOutcome(AUTO_METHOD, before, after, seconds, used=after > before)
        LOG.info("%s: recovery before islands: nothing kept %.4f -> %.4f", backend.name, before, after)
        if start.recovery.used:
            start.measure = recovered
        if after >= threshold:
            outcome = "taken: meets the target at no inference cost"
        elif start.recovery.used:
            outcome = "taken: the islands were searched on the recovered weights"
        else:
            outcome = "no gain: the islands were searched on the weights as quantized"
        spent = time.perf_counter() - started if seconds else 0.0  # 0: recovered records read back
        start.moves.append(
            SearchMove(
                MoveKind.RECOVERY,
                AUTO_METHOD.value,
                score_before=before,
                score=after,
                met=after >= threshold,
                per_inference_ms=0.0,
                seconds=round(spent, 1),
                outcome=outcome,
            )
        )
        return start

    def _island_costs(
        self, backend: Backend, measure: Measure, search_dir: Path, *, nothing_kept: Path | None
    ) -> IslandCosts | None:
        """What each float island costs on ``backend``'s runtime (island_costs.py), profiled once per
        search directory (a resumed search reads it back); None for a size target or no profiler."""
        if backend.objective is not Objective.SPEED:
            return None
        path = search_dir / ISLAND_COSTS_FILE
        if path.is_file():
            return IslandCosts.from_dict(read_json(path, ISLAND_COSTS_KIND))
        image = self._source.images[:1].numpy()
        with tempfile.TemporaryDirectory() as tmp:
            if nothing_kept is None:  # the same kept set, written the same way (kept_sets.py)
                nothing_kept = backend.save(measure.model(()), Path(tmp) / "k0.onnx", source=measure.source)
            costs = measure_island_costs(
                backend,
                float_path=self.candidates_dir / FP32_FILE,
                int8_path=nothing_kept,
                units=conv_units(self._ranges.model),
                image=image,
            )
        if costs is not None:
            write_json(path, ISLAND_COSTS_KIND, costs.to_dict())
            LOG.info(
                "%s: conv units take %.2f ms in float, %.2f ms in INT8 (%s profile)",
                backend.name,
                sum(costs.float_ms.values()),
                sum(costs.int8_ms.values()),
                costs.runtime,
            )
        return costs
