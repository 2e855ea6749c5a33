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
from typing import Any

from quantsweep.config import ActDtype, QuantFormat, SweepConfig, SweepMethod
from quantsweep.errors import InputError
from quantsweep.models.network import LayerInfo
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.weights import QuantizedWeight
from quantsweep.records import JsonLines, write_json
from quantsweep.sweep.engine import ExactSweep, LayerResult
from quantsweep.sweep.fast import FAST_CHUNK
from quantsweep.sweep.fast import estimate as fast_estimate
from quantsweep.sweep.report import IndexRow, build_report, rank, write_index, write_report

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

    def weights_for(self, fmt: QuantFormat) -> dict[str, QuantizedWeight] | None:
        """The records of one combination (None: round to nearest)."""
        return None if self.weights is None else self.weights.get(fmt.name)


def _failure(combination: str, reason: str, *, layer: str | None = None, status: str) -> dict[str, Any]:
    return {"combination": combination, "layer": layer, "status": status, "reason": reason}


def _measure_exact(
    job: SweepJob, fmt: QuantFormat, layers, *, store: JsonLines, results: dict, on_layer, failures: list
) -> None:
    """Measure every layer of ``layers`` missing from ``results``, appending each to ``store``."""
    for layer in layers:
        if layer.name in results:
            on_layer(f"{fmt.name} {layer.name} (done before)")
            continue
        try:
            result = job.engine.measure(layer, fmt, act_ranges=job.act_ranges, weights=job.weights_for(fmt))
        except (RuntimeError, ValueError) as exc:
            LOG.warning("layer %s failed under %s: %s", layer.name, fmt.name, exc)
            failures.append(_failure(fmt.name, str(exc), layer=layer.name, status="failed"))
            on_layer(f"{fmt.name} {layer.name} failed")
            continue
        store.append(result.to_dict())
        results[layer.name] = result
        on_layer(f"{fmt.name} {layer.name}")


def _fast_estimates(job: SweepJob, fmt: QuantFormat, directory: Path, *, on_layer) -> dict[str, LayerResult]:
    """Fast estimates of every layer, computed once and kept in ``fast_estimates.jsonl``."""
    store = JsonLines(directory / FAST_FILE)
    known = {r["name"]: LayerResult.from_dict(r) for r in store.read()}
    if len(known) < len(job.layers):
        estimate = fast_estimate(
            job.engine.network,
            job.engine.batch,
            job.layers,
            fmt=fmt,
            act_ranges=job.act_ranges,
            weights=job.weights_for(fmt),
            batch_size=min(job.config.batch_size, FAST_CHUNK),
            device=job.config.device,
            seed=job.config.seed,
        )
        per_layer = estimate.seconds / len(job.layers)
        for layer in job.layers:
            if layer.name not in known:
                known[layer.name] = LayerResult(
                    layer.name, estimate.box_error[layer.name], per_layer, method="fast"
                )
                store.append(known[layer.name].to_dict())
    for layer in job.layers:
        on_layer(f"{fmt.name} {layer.name} (fast)")
    return known


def hybrid_size(config: SweepConfig) -> int:
    """How many layers the hybrid method measures exactly."""
    return config.hybrid_exact if config.hybrid_exact is not None else 2 * config.top_k + 10


def _ranked_results(
    job: SweepJob, fmt: QuantFormat, directory: Path, *, on_layer, failures
) -> list[LayerResult]:
    store = JsonLines(directory / RESULTS_FILE)
    results = {r["name"]: LayerResult.from_dict(r) for r in store.read()}
    rank_by, method = job.config.rank_by, job.config.method
    if method is SweepMethod.EXACT:
        _measure_exact(
            job, fmt, job.layers, store=store, results=results, on_layer=on_layer, failures=failures
        )
        return rank([results[layer.name] for layer in job.layers if layer.name in results], rank_by)
    estimates = _fast_estimates(job, fmt, directory, on_layer=on_layer)
    if method is SweepMethod.FAST:
        return rank([estimates[layer.name] for layer in job.layers], rank_by)
    # hybrid: the fast top-N measured exactly and ranked first, so the order is exact where it matters
    info = {layer.name: layer for layer in job.layers}
    top = [info[r.name] for r in rank(list(estimates.values()), rank_by)[: hybrid_size(job.config)]]
    _measure_exact(job, fmt, top, store=store, results=results, on_layer=on_layer, failures=failures)
    exact = rank([results[layer.name] for layer in top if layer.name in results], rank_by)
    measured = {r.name for r in exact}
    return exact + rank([r for r in estimates.values() if r.name not in measured], rank_by)


def run_combination(job: SweepJob, fmt: QuantFormat, *, on_layer: ProgressFn, failures: list) -> IndexRow:
    """Measure (or estimate) every missing layer of one combination, then write its report."""
    directory = job.run_dir / fmt.name
    ranked = _ranked_results(job, fmt, directory, on_layer=on_layer, failures=failures)
    report = build_report(
        fmt,
        layers=job.layers,
        ranked=ranked,
        rank_by=job.config.rank_by,
        top_k=job.config.top_k,
        context=job.context,
    )
    path = write_report(directory, report)
    # Summed per-layer times, so a resumed combination reports the same cost as an uninterrupted one.
    elapsed = sum(r.elapsed_s for r in ranked)
    return IndexRow(
        combination=fmt.name,
        status="ok" if len(ranked) == len(job.layers) else "partial",
        elapsed_s=elapsed,
        layers_measured=len(ranked),
        top_layers=tuple(report["top_layers"]),
        report=str(path.relative_to(job.run_dir)),
    )


def execute(job: SweepJob, *, on_layer: ProgressFn) -> list[IndexRow]:
    """Run all combinations of the job; skipped ones are recorded with their reason."""
    rows: list[IndexRow] = []
    failures: list[dict[str, Any]] = []
    for fmt in job.config.formats:
        reason = fmt.unsupported_reason()
        if reason:
            failures.append(_failure(fmt.name, reason, status="skipped"))
            rows.append(IndexRow(fmt.name, "skipped", 0.0, 0, (), None, reason))
        else:
            rows.append(run_combination(job, fmt, on_layer=on_layer, failures=failures))
        write_index(job.run_dir, rows)
        write_json(job.run_dir / "failures.json", "sweep_failures", {"failures": failures})
    return rows


def needs_act_ranges(formats: Sequence[QuantFormat]) -> bool:
    """True when any runnable combination quantizes activations."""
    return any(f.act is not ActDtype.FP16 and not f.unsupported_reason() for f in formats)
