"""The evaluate stage: every artifact of every target scored on its own runtime, then timed side by side.

Per target: accuracy of each artifact from the target runtime's outputs (written as each finishes),
optionally the scheme search, then one interleaved timing pass over the FP32 model and every
artifact, and a recommendation (fastest, or smallest, model within the accuracy target).

With an executor (``quantsweep.execution``, e.g. Ray), each artifact's accuracy is one task and
each target's timing pass is one task: the models a ratio compares run on one worker, whose host
and device are recorded with the figures.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantsweep.core.layout import deferred_dir
from quantsweep.evaluation.recommend import recommend, tie_unclear, undecided_pair
from quantsweep.evaluation.scoring import Accuracy, load_checked
from quantsweep.onnx_graph.candidates import Artifact
from quantsweep.schemes.scheme_records import FP32_NAME, Policy
from quantsweep.stages.common import ProgressFactory, no_progress
from quantsweep.stages.eval_context import EvalContext, EvalRequest, prepare_context
from quantsweep.stages.eval_records import EvalRun, ResultStore
from quantsweep.stages.eval_writes import EvalWrites
from quantsweep.stages.search_stage import SearchRequest, TargetSearch
from quantsweep.targets import Backend, Objective, get_backend
from quantsweep.targets.timing import Timing, interleaved_latency, pooled_lower_quartile_ratios

if TYPE_CHECKING:
    from quantsweep.execution import Executor

LOG = logging.getLogger(__name__)


def _score_path(path: str, *, target: str, context: EvalContext) -> dict[str, Any]:
    """One artifact's accuracy on ``target``'s runtime (a module-level function: executors pickle it)."""
    return context.score(get_backend(target), Path(path)).to_dict()


def _dominated(
    artifact: Artifact, artifacts: list[Artifact], passing: list[Artifact], *, objective: Objective
) -> str | None:
    """Why an artifact need not be scored: a top-K artifact of the same placement with fewer float
    layers already meets the accuracy target, so this one can be neither faster (each float layer
    adds its float kernel and Q/DQ around it) nor smaller; on a size target, any scheme's artifact
    at least as large as one that meets it. A reference scheme, and a top-K artifact a reference
    scheme is compared with at the same K, are always scored."""
    if Policy(artifact.policy).is_reference or artifact.policy in (Policy.FP32, Policy.BASELINE):
        return None
    if any(Policy(a.policy).is_reference and a.kept == artifact.kept for a in artifacts):
        return None
    if objective is Objective.SIZE:
        smaller = [a for a in passing if a.size_bytes <= artifact.size_bytes]
        if smaller:
            best = min(smaller, key=lambda a: a.size_bytes)
            size_mb = best.size_bytes / 1e6
            return f"`{best.name}` meets the accuracy target in a file no larger ({size_mb:.1f} MB)"
    if artifact.policy != Policy.TOP_K or artifact.kept is None:
        return None
    fewer = [a for a in passing if a.policy == Policy.TOP_K and a.kept is not None and a.kept < artifact.kept]
    if not fewer:
        return None
    best = min(fewer, key=lambda a: a.kept)
    return f"`{best.name}` meets the accuracy target with fewer float layers ({best.kept})"


def _scoring_order(artifact: Artifact) -> tuple:
    """FP32 first, then top-K by kept layers (so a passing one can spare the larger), then the rest."""
    return (artifact.policy != Policy.FP32, artifact.policy != Policy.TOP_K, artifact.kept or 0)


def _accuracy_pass(
    backend: Backend,
    artifacts: list[Artifact],
    context: EvalContext,
    store: ResultStore,
    *,
    step,
    executor,
    meets=None,
    write=None,
) -> None:
    """Score every artifact not scored yet; ``meets(score)`` (the accuracy target) lets the sequential
    pass skip top-K artifacts a passing one dominates (recorded with the reason, see _dominated);
    ``write(artifact)`` writes a deferred one when it is needed and returns its record."""
    missing = [a for a in artifacts if not store.has(a.name)]
    records = store.all()
    passing = [a for a in artifacts if meets and a.name in records and meets(records[a.name]["score"])]
    for artifact in artifacts:
        if artifact not in missing:
            step(f"{backend.name} {artifact.name} (done before)")
    known = context.float_scores.get(backend.float_run_key())
    for artifact in [a for a in missing if a.policy == Policy.FP32 and known is not None]:
        # the same file run the same way for another target (or as the run's reference)
        store.write_accuracy(artifact, known)
        missing.remove(artifact)
        step(f"{backend.name} {artifact.name} (as run before)")
    if executor is None:
        for artifact in sorted(missing, key=_scoring_order):
            reason = _dominated(artifact, artifacts, passing, objective=backend.objective)
            if reason is not None:
                written = ", so it was not written either" if artifact.deferred else ""
                store.write_skipped(artifact.name, reason + written)
                step(f"{backend.name} {artifact.name} (not needed)")
                continue
            acc = _score_artifact(backend, artifact, context, store, write=write)
            if meets is not None and meets(acc.value(context.metric)):
                passing.append(artifact)
            if artifact.policy == Policy.FP32:
                context.float_scores[backend.float_run_key()] = acc
            step(f"{backend.name} {artifact.name}")
        return
    records = [_record(artifact, store, write=write) for artifact in missing]  # the tasks need files
    score = partial(_score_path, target=backend.name, context=context)
    for done in executor.map_tasks(score, [r["file"] for r in records]):
        worker = {"host": done.host, "device": done.device, "elapsed_s": done.elapsed_s}
        store.write_result(records[done.index], Accuracy(**done.value), worker=worker)
        step(f"{backend.name} {missing[done.index].name}")


def _record(artifact: Artifact, store: ResultStore, *, write) -> dict[str, Any]:
    """The record an artifact is scored under: a deferred one's is made by writing it now."""
    return write(artifact) if artifact.deferred else store.record_of(artifact)


def _score_artifact(backend: Backend, artifact: Artifact, context: EvalContext, store: ResultStore, *, write):
    """Score one artifact (a deferred one written first) and record it; its accuracy."""
    record = _record(artifact, store, write=write)
    acc = context.score(backend, Path(record["file"]))
    store.write_result(record, acc)
    return acc


def _meets(score: float, *, target, reference: float) -> bool:
    return target.met(score, reference)


def _timed_runners(paths: dict[str, str], *, target: str, context: EvalContext) -> tuple[dict, np.ndarray]:
    """The models to time, loaded in the target's runtime, and the one image every timing runs."""
    backend = get_backend(target)
    runners = {name: load_checked(backend, Path(p), imgsz=context.config.imgsz) for name, p in paths.items()}
    return runners, context.batch.images[0][None].numpy()


def _time_models(
    paths: dict[str, str],
    *,
    target: str,
    context: EvalContext,
    request: EvalRequest,
    step=None,
    contenders: set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time every model of one target in one interleaved pass (on whichever worker runs this); one
    found far slower than a ``contender`` (a model that may be recommended) is dropped early."""
    runners, image = _timed_runners(paths, target=target, context=context)
    timings = interleaved_latency(
        runners,
        image,
        reference=FP32_NAME,
        rounds=timing_rounds(get_backend(target), request),
        runs_per_round=request.latency_runs,
        progress=None if step is None else (lambda message: step(f"{target} timing {message}")),
        contenders=contenders,
    )
    return {name: timing.to_dict() for name, timing in timings.items()}


SIZE_TIMING_ROUNDS = 3  # a size target is chosen by size: its timing informs, it decides nothing


def timing_rounds(backend: Backend, request: EvalRequest) -> int:
    """Interleaved rounds of the target's timing pass (fewer where time decides nothing)."""
    if backend.objective is Objective.SIZE:
        return min(request.latency_rounds, SIZE_TIMING_ROUNDS)
    return request.latency_rounds


def timing_pass(
    backend: Backend,
    store: ResultStore,
    context: EvalContext,
    request: EvalRequest,
    *,
    step,
    executor=None,
    only: set[str] | None = None,
    meets=None,
) -> None:
    """Time FP32 and every scored model of the target (or those in ``only``) in one interleaved
    pass; record each. With ``meets(score)`` (the accuracy target), the models that meet it are the
    contenders, and a model far slower than the fastest of them is timed for fewer rounds."""
    records = {name: r for name, r in store.all().items() if only is None or name in only}
    paths = {name: str(store.artifact_path(r)) for name, r in records.items()}
    contenders = None
    if meets is not None:
        contenders = {
            name
            for name, r in records.items()
            if r["policy"] not in (Policy.FP32, Policy.BASELINE) and meets(r["score"])
        }
    time_models = partial(
        _time_models, target=backend.name, context=context, request=request, contenders=contenders
    )
    worker = None
    if executor is None:
        timings = time_models(paths, step=step)
    else:
        timed = time_models
        (done,) = list(executor.map_tasks(timed, [paths]))
        timings, worker = done.value, {"host": done.host, "device": done.device}
        for _ in range(timing_rounds(backend, request)):
            step(f"{backend.name} timed on {done.host}")
    for name, timing in timings.items():
        store.write_timing(name, Timing(**timing), worker=worker)
    store.mark_timed(list(timings))


TIE_ROUNDS = 15  # a pair's own pass: about 4 s on YOLOv10s, 8 s on YOLOv10m at 320 px here
TIE_PASSES = 2  # a second pass, pooled with the first, only where the first left it open
TIE_PAIRS = 2  # pairs timed alone per target: a more accurate quantized model, then FP32


def _pair_ratio(
    paths: dict[str, str], *, target: str, context: EvalContext, anchor: str
) -> tuple[float, int]:
    """The other model's lower-quartile latency over ``anchor``'s from passes of the two alone, and
    the rounds it is over (a second pass where the first put it just outside the tie)."""
    runners, image = _timed_runners(paths, target=target, context=context)
    challenger = next(name for name in runners if name != anchor)
    ratios, rounds = pooled_lower_quartile_ratios(
        runners,
        image,
        reference=anchor,
        again=lambda found: tie_unclear(found[challenger], challenger=challenger),
        rounds=TIE_ROUNDS,
        passes=TIE_PASSES,
    )
    return ratios[challenger], rounds


def settle_tie(
    backend: Backend, store: ResultStore, context: EvalContext, request: EvalRequest, *, executor=None
) -> None:
    """Where the shared timing pass left the fastest model and a more accurate one undecided (a few
    percent apart, within its noise), time the two again alone and record the challenger's ratio;
    the recommendation then follows that pass (``evaluate.recommend``). Then FP32 against the
    fastest, where the choice beats it by a few percent only: up to ``TIE_PAIRS`` pairs."""
    for _ in range(TIE_PAIRS):
        pair = undecided_pair(
            backend, store, reference=context.reference_score, target=request.accuracy_target
        )
        if pair is None:
            return
        _settle_pair(backend, store, context, pair, executor=executor)


def _settle_pair(backend: Backend, store: ResultStore, context: EvalContext, pair, *, executor) -> None:
    """Time one undecided pair alone (on a worker where there is an executor) and record it."""
    anchor, challenger = pair
    records = store.all()
    paths = {name: str(store.artifact_path(records[name])) for name in pair}
    measure = partial(_pair_ratio, target=backend.name, context=context, anchor=anchor)
    worker = None
    if executor is None:
        ratio, rounds = measure(paths)
    else:  # on a worker, as the timing pass was
        (done,) = list(executor.map_tasks(measure, [paths]))
        (ratio, rounds), worker = done.value, {"host": done.host, "device": done.device}
    LOG.info(
        "%s: %s timed %.3fx %s alone (lower quartile, %d rounds)",
        backend.name,
        challenger,
        ratio,
        anchor,
        rounds,
    )
    store.write_tie_check(challenger, against=anchor, ratio=ratio, rounds=rounds, worker=worker)


def evaluate_target(
    backend: Backend,
    run: EvalRun,
    context: EvalContext,
    *,
    search: TargetSearch | None = None,
    progress: ProgressFactory = no_progress,
    executor: Executor | None = None,
    writes: EvalWrites | None = None,
) -> dict[str, Any]:
    """Score, optionally search, time and recommend for one target; return its recommendation."""
    store = run.store(backend.name)
    entry = run.index.targets[backend.name]
    artifacts = entry.artifacts
    write = None
    if writes is not None:
        write = partial(
            writes.write_deferred,
            backend,
            schemes_dir=Path(entry.schemes_dir),
            directory=deferred_dir(run.directory, backend.name),
        )
    rounds = timing_rounds(backend, run.request)
    with progress(len(artifacts) + rounds, f"evaluate {backend.name}") as step:
        target = run.request.accuracy_target
        meets = partial(_meets, target=target, reference=context.reference_score)
        _accuracy_pass(
            backend, artifacts, context, store, step=step, executor=executor, meets=meets, write=write
        )
        if search is not None:
            search(backend, store)
        choose = partial(
            recommend,
            backend,
            store,
            reference=context.reference_score,
            metric=context.metric,
            target=run.request.accuracy_target,
        )
        only = None
        if backend.objective is Objective.SIZE:  # chosen by size: time FP32 and the choice only
            only = {FP32_NAME, choose()["recommended"] or FP32_NAME}
        if not store.timed(only):
            timing_pass(
                backend, store, context, run.request, step=step, executor=executor, only=only, meets=meets
            )
        settle_tie(backend, store, context, run.request, executor=executor)
    return choose()


def evaluate_candidates(
    request: EvalRequest,
    *,
    out: Path | None,
    resume: Path | None = None,
    search: SearchRequest | None = None,
    progress: ProgressFactory = no_progress,
    executor: Executor | None = None,
) -> Path:
    """Score (and with ``search``, search) every target into a new or resumed run; return its directory."""
    context, index = prepare_context(Path(request.candidates_dir), request)
    run = EvalRun.open(request, context=context, index=index, out=out, resume=resume)
    writes = EvalWrites(Path(request.candidates_dir), context.config)
    searcher = None
    if search is not None:
        searcher = TargetSearch(search, eval_request=request, context=context, index=index, writes=writes)
        searcher.progress = progress
    for name in run.targets:
        backend = get_backend(name)
        available = backend.availability()
        if not available.available:
            LOG.warning("target %s is not available here: %s", name, available.reason)
            run.record_unavailable(name, available.reason)
            continue
        evaluate_target(
            backend, run, context, search=searcher, progress=progress, executor=executor, writes=writes
        )
    return run.directory
