"""Drive a sweep over combinations and layers, writing every result as it is produced.

Each combination keeps ``layer_results.jsonl`` (one line per finished layer); a resumed run reads
it and measures only what is missing, so an interrupted sweep loses nothing finished.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantsweep.core.config import ActDtype, QuantFormat, SweepConfig, SweepMethod
from quantsweep.core.errors import InputError
from quantsweep.core.layout import format_dir
from quantsweep.core.records import JsonLines, write_json
from quantsweep.models.network import LayerInfo
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.weights import QuantizedWeight
from quantsweep.sensitivity.engine import ExactSweep, LayerResult
from quantsweep.sensitivity.fast import FAST_CHUNK
from quantsweep.sensitivity.fast import estimate as fast_estimate
from quantsweep.sensitivity.screen import SCREEN_METHOD, hybrid_size
from quantsweep.sensitivity.shards import LayerOutcome, SweepWork, plan_shards
from quantsweep.sensitivity.sweep_report import IndexRow, build_report, rank, write_index, write_report

if TYPE_CHECKING:
    from quantsweep.execution.executor import Executor

LOG = logging.getLogger(__name__)
RESULTS_FILE = "layer_results.jsonl"
FAST_FILE = "fast_estimates.jsonl"

ProgressFn = Callable[[str], None]


def select_layers(layers: Sequence[LayerInfo], patterns: Sequence[str]) -> list[LayerInfo]:
    """Layers whose name matches any glob (all layers when no pattern is given)."""
    if not patterns:
        return list(layers)
    chosen = [layer for layer in layers if any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)]
    if not chosen:
        raise InputError(
            f"--layers {','.join(patterns)} matches none of the {len(layers)} quantizable layers"
        )
    return chosen


@dataclass
class SweepJob:
    """A prepared sweep: the engine, the layers to measure and where results go."""

    config: SweepConfig
    engine: ExactSweep
    layers: list[LayerInfo]
    run_dir: Path
    act_ranges: dict[str, ActRange] | None
    context: dict[str, Any]
    # {format name: {layer: record}}: each layer quantized alone by the configured method
    weights: dict[str, dict[str, QuantizedWeight]] | None = None
    # fast and hybrid: {format name: {layer: box error}} with round-to-nearest weights (sweep.screen)
    screen: dict[str, dict[str, float]] | None = None

    def weights_for(self, fmt: QuantFormat) -> dict[str, QuantizedWeight] | None:
        """The records of one combination (None: round to nearest)."""
        return None if self.weights is None else self.weights.get(fmt.name)


def _failure(combination: str, reason: str, *, layer: str | None = None, status: str) -> dict[str, Any]:
    return {"combination": combination, "layer": layer, "status": status, "reason": reason}


def _fast_estimates(job: SweepJob, fmt: QuantFormat, directory: Path, *, on_layer) -> dict[str, LayerResult]:
    """Fast estimates of every layer, computed once and kept in ``fast_estimates.jsonl``: the layers
    with the configured quantizer's records estimated with them, the others by the screen."""
    store = JsonLines(directory / FAST_FILE)
    known = {r["name"]: LayerResult.from_dict(r) for r in store.read()}
    if len(known) < len(job.layers):
        screen = (job.screen or {}).get(fmt.name)
        records = job.weights_for(fmt) or {}
        refined = [layer for layer in job.layers if screen is None or layer.name in records]
        estimate = fast_estimate(
            job.engine.network,
            job.engine.batch,
            refined,
            fmt=fmt,
            act_ranges=job.act_ranges,
            weights=records,
            batch_size=min(job.config.batch_size, FAST_CHUNK),
            device=job.config.device,
            seed=job.config.seed,
        )
        per_layer = estimate.seconds / max(len(refined), 1)
        for layer in job.layers:
            if layer.name in known:
                continue
            if layer.name in estimate.box_error:
                result = LayerResult(layer.name, estimate.box_error[layer.name], per_layer, method="fast")
            else:
                result = LayerResult(layer.name, screen[layer.name], 0.0, method=SCREEN_METHOD)
            known[layer.name] = result
            store.append(result.to_dict())
    for layer in job.layers:
        on_layer(f"{fmt.name} {layer.name} (fast)")
    return known


def _estimates_ranked(estimates: list[LayerResult], rank_by) -> list[LayerResult]:
    """Layers estimated with the configured quantizer first, then the ones only screened."""
    refined = [r for r in estimates if r.method != SCREEN_METHOD]
    return rank(refined, rank_by) + rank([r for r in estimates if r.method == SCREEN_METHOD], rank_by)


@dataclass
class _Plan:
    """One combination in progress: its stored results and the layers still to measure exactly."""

    fmt: QuantFormat
    directory: Path
    store: JsonLines
    results: dict[str, LayerResult]
    exact: list[LayerInfo]  # the layers this method measures exactly
    estimates: dict[str, LayerResult]  # fast estimates (fast and hybrid only)
    pending: list[str]


def _plan(job: SweepJob, fmt: QuantFormat, *, on_layer: ProgressFn) -> _Plan:
    directory = format_dir(job.run_dir, fmt)
    store = JsonLines(directory / RESULTS_FILE)
    results = {r["name"]: LayerResult.from_dict(r) for r in store.read()}
    estimates: dict[str, LayerResult] = {}
    exact = list(job.layers)
    if job.config.method is not SweepMethod.EXACT:
        estimates = _fast_estimates(job, fmt, directory, on_layer=on_layer)
        exact = []
        if job.config.method is SweepMethod.HYBRID:
            # the fast top-N measured exactly and ranked first, so the order is exact where it matters
            info = {layer.name: layer for layer in job.layers}
            ranked = _estimates_ranked(list(estimates.values()), job.config.rank_by)
            exact = [info[r.name] for r in ranked[: hybrid_size(job.config)]]
    for layer in exact:
        if layer.name in results:
            on_layer(f"{fmt.name} {layer.name} (done before)")
    pending = [layer.name for layer in exact if layer.name not in results]
    return _Plan(fmt, directory, store, results, exact, estimates, pending)


def _ranked(job: SweepJob, plan: _Plan) -> list[LayerResult]:
    rank_by, results = job.config.rank_by, plan.results
    if job.config.method is SweepMethod.EXACT:
        return rank([results[layer.name] for layer in job.layers if layer.name in results], rank_by)
    if job.config.method is SweepMethod.FAST:
        return _estimates_ranked([plan.estimates[layer.name] for layer in job.layers], rank_by)
    exact = rank([results[layer.name] for layer in plan.exact if layer.name in results], rank_by)
    measured = {r.name for r in exact}
    return exact + _estimates_ranked([r for r in plan.estimates.values() if r.name not in measured], rank_by)


def _finish(job: SweepJob, plan: _Plan) -> IndexRow:
    """Rank what one combination measured (or estimated) and write its report."""
    ranked = _ranked(job, plan)
    report = build_report(
        plan.fmt,
        layers=job.layers,
        ranked=ranked,
        rank_by=job.config.rank_by,
        top_k=job.config.top_k,
        context=job.context,
    )
    path = write_report(plan.directory, report)
    # Summed per-layer times, so a resumed combination reports the same cost as an uninterrupted one.
    elapsed = sum(r.elapsed_s for r in ranked)
    return IndexRow(
        combination=plan.fmt.name,
        status="ok" if len(ranked) == len(job.layers) else "partial",
        elapsed_s=elapsed,
        layers_measured=len(ranked),
        top_layers=tuple(report["top_layers"]),
        report=str(path.relative_to(job.run_dir)),
    )


def _record(plan: _Plan, outcome: LayerOutcome, *, on_layer: ProgressFn, failures: list) -> None:
    """Store one arrived layer durably (or its failure) before anything else happens."""
    name = f"{plan.fmt.name} {outcome.layer}"
    if outcome.result is None:
        failures.append(_failure(plan.fmt.name, outcome.error or "", layer=outcome.layer, status="failed"))
        on_layer(f"{name} failed")
        return
    plan.store.append(outcome.result.to_dict())
    plan.results[outcome.layer] = outcome.result
    on_layer(name)


def _write_status(job: SweepJob, rows: dict[str, IndexRow | None], failures: list) -> None:
    write_index(job.run_dir, [row for row in rows.values() if row is not None])
    write_json(job.run_dir / "failures.json", "sweep_failures", {"failures": failures})


def execute(job: SweepJob, *, on_layer: ProgressFn, executor: Executor) -> list[IndexRow]:
    """Run all combinations of the job on ``executor``; skipped ones are recorded with their reason.

    Every layer is appended to its combination's ``layer_results.jsonl`` as it arrives, and a
    combination's report is written as soon as its last layer is in.
    """
    rows: dict[str, IndexRow | None] = {}
    failures: list[dict[str, Any]] = []
    plans: dict[str, _Plan] = {}
    for fmt in job.config.formats:
        reason = fmt.unsupported_reason()
        if reason:
            failures.append(_failure(fmt.name, reason, status="skipped"))
            rows[fmt.name] = IndexRow(fmt.name, "skipped", 0.0, 0, (), None, reason)
        else:
            rows[fmt.name] = None
            plans[fmt.name] = _plan(job, fmt, on_layer=on_layer)
    remaining = {name: len(plan.pending) for name, plan in plans.items()}
    for name, plan in plans.items():
        if not remaining[name]:
            rows[name] = _finish(job, plan)
    _write_status(job, rows, failures)
    size = executor.shard_size(
        max((len(p.pending) for p in plans.values()), default=1), device=job.config.device
    )
    shards = plan_shards([(p.fmt, p.pending) for p in plans.values()], size=size)
    work = SweepWork(
        config=job.config,
        engine=job.engine,
        layers=job.layers,
        act_ranges=job.act_ranges,
        weights=job.weights,
    )
    for outcome in executor.map_shards(work, shards):
        plan = plans[outcome.combination]
        _record(plan, outcome, on_layer=on_layer, failures=failures)
        remaining[outcome.combination] -= 1
        if not remaining[outcome.combination]:
            rows[outcome.combination] = _finish(job, plan)
            _write_status(job, rows, failures)
    return [row for row in rows.values() if row is not None]


def needs_act_ranges(formats: Sequence[QuantFormat]) -> bool:
    """True when any runnable combination quantizes activations."""
    return any(f.act is not ActDtype.FP16 and not f.unsupported_reason() for f in formats)
