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

from quantsweep.config import ActDtype, QuantFormat, SweepConfig
from quantsweep.errors import InputError
from quantsweep.models.network import LayerInfo
from quantsweep.records import JsonLines, write_json
from quantsweep.sweep.engine import ExactSweep, LayerResult
from quantsweep.sweep.report import IndexRow, build_report, write_index, write_report

LOG = logging.getLogger(__name__)
RESULTS_FILE = "layer_results.jsonl"

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
    act_ranges: dict[str, float] | None
    context: dict[str, Any]


def _failure(combination: str, reason: str, *, layer: str | None = None, status: str) -> dict[str, Any]:
    return {"combination": combination, "layer": layer, "status": status, "reason": reason}


def run_combination(job: SweepJob, fmt: QuantFormat, *, on_layer: ProgressFn, failures: list) -> IndexRow:
    """Measure every missing layer of one combination, then write its report."""
    directory = job.run_dir / fmt.name
    store = JsonLines(directory / RESULTS_FILE)
    results = {r["name"]: LayerResult.from_dict(r) for r in store.read()}
    for layer in job.layers:
        if layer.name in results:
            on_layer(f"{fmt.name} {layer.name} (done before)")
            continue
        try:
            result = job.engine.measure(layer, fmt, act_ranges=job.act_ranges)
        except (RuntimeError, ValueError) as exc:
            LOG.warning("layer %s failed under %s: %s", layer.name, fmt.name, exc)
            failures.append(_failure(fmt.name, str(exc), layer=layer.name, status="failed"))
            on_layer(f"{fmt.name} {layer.name} failed")
            continue
        store.append(result.to_dict())
        results[layer.name] = result
        on_layer(f"{fmt.name} {layer.name}")
    measured = [results[layer.name] for layer in job.layers if layer.name in results]
    report = build_report(
        fmt,
        layers=job.layers,
        results=measured,
        rank_by=job.config.rank_by,
        top_k=job.config.top_k,
        context=job.context,
    )
    path = write_report(directory, report)
    # Summed per-layer times, so a resumed combination reports the same cost as an uninterrupted one.
    elapsed = sum(r.elapsed_s for r in measured)
    return IndexRow(
        combination=fmt.name,
        status="ok" if len(measured) == len(job.layers) else "partial",
        elapsed_s=elapsed,
        layers_measured=len(measured),
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
