"""``quantsweep run``: every stage, from a checkpoint to a recommended ONNX model and its report.

With no data given (the bundled model), calibration and validation images are generated into the
run directory. Every stage writes its own run directory inside this run's, so any stage can be
re-run alone on the previous one's output.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from quantsweep.core.config import QuantFormat, SweepConfig, WeightDtype
from quantsweep.core.errors import InputError
from quantsweep.core.layout import format_dir
from quantsweep.core.records import write_json
from quantsweep.core.runs import new_run_dir
from quantsweep.data.shapes import generate_split
from quantsweep.evaluation.accuracy_target import AccuracyTarget
from quantsweep.report.build import build_report
from quantsweep.schemes.policies import precisions
from quantsweep.sensitivity.sweep_report import REPORT_NAME
from quantsweep.stages import SchemesRequest, make_schemes, materialize_candidates, sweep
from quantsweep.stages.common import ProgressFactory, RunCache, no_progress
from quantsweep.stages.eval_context import EvalRequest, load_eval_batch
from quantsweep.stages.evaluate_stage import evaluate_candidates
from quantsweep.stages.materialize_stage import MaterializeRequest
from quantsweep.stages.search_stage import SearchRequest
from quantsweep.targets import ConvKind, get_backend

LOG = logging.getLogger(__name__)
CALIB_SPLIT_SEED = 2  # a split the testbed checkpoint never saw; its val split is seed 1


@dataclass(frozen=True)
class RunConfig:
    """The whole job: the sweep, the schemes to build, the targets, and the evaluation and search."""

    sweep: SweepConfig
    eval_data: str | None
    schemes: SchemesRequest
    search: SearchRequest
    targets: tuple[str, ...]
    accuracy_target: AccuracyTarget
    eval_images: int = 100
    latency_rounds: int = 7
    latency_runs: int = 5


def _default_data(run_dir: Path, config: RunConfig) -> tuple[str, str]:
    data_dir = run_dir / "data"
    calib = generate_split(
        data_dir / "calib",
        split="calib",
        count=config.sweep.max_images,
        size=config.sweep.imgsz,
        split_seed=CALIB_SPLIT_SEED,
    )
    val = generate_split(data_dir / "val", split="val", count=config.eval_images, size=config.sweep.imgsz)
    return str(calib), str(val)


def _reports(sweep_dir: Path, config: SweepConfig) -> list[tuple[QuantFormat, Path]]:
    paths = [(fmt, format_dir(sweep_dir, fmt) / f"{REPORT_NAME}.json") for fmt in config.formats]
    found = [(fmt, path) for fmt, path in paths if path.is_file()]
    if not found:
        raise InputError(f"the sweep in {sweep_dir} produced no report")
    return found


def _schemes_request(request: SchemesRequest, report: Path, fmt: QuantFormat) -> SchemesRequest:
    """The run's schemes for one combination: the bit budget and the reference schemes (random,
    first+head) where they mean something and the run can afford them: on INT4 weights only, at the
    smallest K > 0 (each reference costs a materialized artifact and a scoring pass: the default
    run's two at K=10 took 19 s of its 5.8 minutes; ``quantsweep schemes`` makes them at every K)."""
    int4 = fmt.weight is WeightDtype.INT4
    smallest = min((k for k in request.ks if k > 0), default=None)
    return dataclasses.replace(
        request,
        report=report,
        target_bits=request.target_bits if int4 else None,
        references=request.references and int4,
        reference_ks=() if smallest is None else (smallest,),
    )


def usable_targets(names: tuple[str, ...], *, explicit: bool) -> tuple[str, ...]:
    """The targets to run; an explicitly requested one that cannot run here is an input error."""
    usable = []
    for name in names:
        available = get_backend(name).availability()
        if available.available:
            usable.append(name)
        elif explicit:
            raise InputError(f"target {name} is not available here: {available.reason}")
        else:
            LOG.warning("skipping target %s: %s", name, available.reason)
    if not usable:
        raise InputError("none of the targets can run on this machine")
    return tuple(usable)


def _record(run_dir: Path, config: RunConfig, sweep_config: SweepConfig, eval_data: str) -> None:
    write_json(
        run_dir / "run_config.json",
        "run_config",
        {
            "sweep": sweep_config.to_dict(),
            "eval_data": eval_data,
            "eval_images": config.eval_images,
            "targets": list(config.targets),
            "ks": list(config.schemes.ks),
            "high": config.schemes.high.value,
            "low": config.schemes.low.value,
            "accuracy_target": config.accuracy_target.to_dict(),
            "max_evals": config.search.max_evals,
            "island_order": config.search.island_order.value,
            "latency": {"rounds": config.latency_rounds, "runs_per_round": config.latency_runs},
        },
    )


def check_targets_fit(config: RunConfig) -> None:
    """Before any work: every target must be able to run the schemes of some swept combination."""
    for name in config.targets:
        backend = get_backend(name)
        # a scheme's precisions on a regular conv (kept float always runs)
        fits = [
            fmt
            for fmt in config.sweep.formats
            if all(
                p.weight is None or p.label in backend.fast_precisions(ConvKind.REGULAR)
                for p in precisions(fmt, low=config.schemes.low, high=config.schemes.high)
            )
        ]
        if not fits:
            swept = ", ".join(f.name for f in config.sweep.formats)
            raise InputError(
                f"target {name} runs {', '.join(sorted(backend.runs()))} only, but the run makes "
                f"{swept} schemes with --low {config.schemes.low.value}: drop the target or sweep "
                f"{backend.sweep_formats()[0].name}"
            )


def run_job(
    config: RunConfig, *, out: Path, progress: ProgressFactory = no_progress, share_loads: bool = True
) -> Path:
    """Run every stage into a new run directory; return the evaluate directory holding the report.

    ``share_loads=False`` makes each stage load the model, calibrate and export for itself, as it
    does when run alone (how ``run`` worked before it shared them; ``benchmarks/run_speed.py``).
    """
    check_targets_fit(config)
    run_dir = new_run_dir(out, model_name=Path(config.sweep.model).stem, stage="run")
    sweep_config, eval_data = config.sweep, config.eval_data
    if eval_data is None:
        calib, eval_data = _default_data(run_dir, config)
        sweep_config = dataclasses.replace(sweep_config, images=calib, seed=0)
    _record(run_dir, config, sweep_config, eval_data)
    # fail on bad evaluation data before minutes of sweeping
    load_eval_batch(
        eval_data,
        max_images=config.eval_images,
        imgsz=sweep_config.imgsz,
        num_classes=10**6,
        image_root=sweep_config.image_root,
    )
    sweep_dir = sweep(sweep_config, out=run_dir, progress=progress)
    shared = RunCache()  # one model load, one calibration batch and one export for what follows

    def cache() -> RunCache:
        return shared if share_loads else RunCache()

    schemes_dirs = tuple(
        make_schemes(_schemes_request(config.schemes, report, fmt), out=run_dir, cache=cache())
        for fmt, report in _reports(sweep_dir, sweep_config)
    )
    # the evaluate stage of the same run writes a speed target's top-K past K=0 only if it needs one
    request = MaterializeRequest(schemes_dirs, config.targets, defer_top_k=True)
    candidates_dir = materialize_candidates(request, out=run_dir, progress=progress, cache=cache())
    eval_request = EvalRequest(
        candidates_dir,
        eval_data,
        max_images=config.eval_images,
        targets=config.targets,
        latency_rounds=config.latency_rounds,
        latency_runs=config.latency_runs,
        accuracy_target=config.accuracy_target,
        image_root=sweep_config.image_root,
    )
    eval_dir = evaluate_candidates(eval_request, out=run_dir, search=config.search, progress=progress)
    build_report(eval_dir)
    return eval_dir
