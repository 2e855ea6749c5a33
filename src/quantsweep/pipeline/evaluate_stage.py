"""The evaluate stage: every artifact of every target scored on its own runtime, then timed side by side.

Per target: accuracy of each artifact from the target runtime's outputs (written as each finishes),
optionally the scheme search, then one interleaved timing pass over the FP32 model and every
artifact, and a recommendation (fastest, or smallest, model within the accuracy target).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quantsweep.backends import Backend, get_backend
from quantsweep.backends.timing import interleaved_latency
from quantsweep.evaluate.recommend import recommend
from quantsweep.evaluate.scoring import load_checked
from quantsweep.export.candidates import Artifact
from quantsweep.pipeline.common import ProgressFactory, no_progress
from quantsweep.pipeline.eval_context import EvalContext, EvalRequest, prepare_context
from quantsweep.pipeline.eval_records import EvalRun, ResultStore
from quantsweep.pipeline.search_stage import SearchRequest, TargetSearch

LOG = logging.getLogger(__name__)


def _accuracy_pass(
    backend: Backend, artifacts: list[Artifact], context: EvalContext, store: ResultStore, step
) -> None:
    for artifact in artifacts:
        if not store.has(artifact.name):
            acc = context.score(backend, store.candidates_dir / artifact.file)
            store.write_accuracy(artifact, acc)
        step(f"{backend.name} {artifact.name}")


def timing_pass(
    backend: Backend, store: ResultStore, context: EvalContext, request: EvalRequest, step
) -> None:
    """Time FP32 and every scored artifact of the target in one interleaved pass; record each."""
    results = store.all()
    runners = {
        name: load_checked(backend, store.artifact_path(result), imgsz=context.config.imgsz)
        for name, result in results.items()
    }
    timings = interleaved_latency(
        runners,
        context.batch.images[0][None].numpy(),
        reference="fp32",
        rounds=request.latency_rounds,
        runs_per_round=request.latency_runs,
        progress=lambda message: step(f"{backend.name} timing {message}"),
    )
    for name, timing in timings.items():
        store.write_timing(name, timing)
    store.mark_timed(list(timings))


def evaluate_target(
    backend: Backend,
    run: EvalRun,
    context: EvalContext,
    *,
    search: TargetSearch | None = None,
    progress: ProgressFactory = no_progress,
) -> dict[str, Any]:
    """Score, optionally search, time and recommend for one target; return its recommendation."""
    store = run.store(backend.name)
    artifacts = run.index.targets[backend.name].artifacts
    with progress(len(artifacts) + run.request.latency_rounds, f"evaluate {backend.name}") as step:
        _accuracy_pass(backend, artifacts, context, store, step)
        if search is not None:
            search(backend, store)
        if not store.timed():
            timing_pass(backend, store, context, run.request, step)
    return recommend(
        backend,
        store,
        reference=context.reference_score,
        metric=context.metric,
        target=run.request.accuracy_target,
    )


def evaluate_candidates(
    request: EvalRequest,
    *,
    out: Path | None,
    resume: Path | None = None,
    search: SearchRequest | None = None,
    progress: ProgressFactory = no_progress,
) -> Path:
    """Score (and with ``search``, search) every target into a new or resumed run; return its directory."""
    context, index = prepare_context(Path(request.candidates_dir), request)
    run = EvalRun.open(request, context=context, index=index, out=out, resume=resume)
    searcher = None
    if search is not None:
        searcher = TargetSearch(search, eval_request=request, context=context, index=index)
        searcher.progress = progress
    for name in run.targets:
        backend = get_backend(name)
        available = backend.availability()
        if not available.available:
            LOG.warning("target %s is not available here: %s", name, available.reason)
            run.record_unavailable(name, available.reason)
            continue
        evaluate_target(backend, run, context, search=searcher, progress=progress)
    return run.directory
