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

from quantsweep.config import SweepConfig
from quantsweep.data.shapes import generate_split
from quantsweep.errors import InputError
from quantsweep.pipeline import SchemesRequest, make_schemes, materialize_candidates, sweep
from quantsweep.pipeline.common import ProgressFactory, no_progress
from quantsweep.pipeline.evaluate_stage import EvalRequest, evaluate_candidates, load_eval_batch
from quantsweep.pipeline.search_stage import SearchRequest, search_scheme
from quantsweep.records import write_json
from quantsweep.report.build import build_report
from quantsweep.runs import new_run_dir
from quantsweep.sweep.report import REPORT_NAME

LOG = logging.getLogger(__name__)
CALIB_SPLIT_SEED = 2  # a split the testbed checkpoint never saw; its val split is seed 1


@dataclass(frozen=True)
class RunConfig:
    """The whole job: the sweep, the schemes to build, and the evaluation and search settings."""

    sweep: SweepConfig
    eval_data: str | None
    schemes: SchemesRequest
    search: SearchRequest
    eval_images: int = 100
    latency_runs: int = 10


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


def _first_report(sweep_dir: Path, config: SweepConfig) -> Path:
    for fmt in config.formats:
        path = sweep_dir / fmt.name / f"{REPORT_NAME}.json"
        if path.is_file():
            return path
    raise InputError(f"the sweep in {sweep_dir} produced no report")


def run_job(config: RunConfig, *, out: Path, progress: ProgressFactory = no_progress) -> Path:
    """Run every stage into a new run directory; return the evaluate directory holding the report."""
    run_dir = new_run_dir(out, model_name=Path(config.sweep.model).stem, stage="run")
    sweep_config, eval_data = config.sweep, config.eval_data
    if eval_data is None:
        calib, eval_data = _default_data(run_dir, config)
        sweep_config = dataclasses.replace(sweep_config, images=calib, seed=0)
    write_json(
        run_dir / "run_config.json",
        "run_config",
        {
            "sweep": sweep_config.to_dict(),
            "eval_data": eval_data,
            "eval_images": config.eval_images,
            "ks": list(config.schemes.ks),
            "high": config.schemes.high.value,
            "low": config.schemes.low.value,
            "max_drop": config.search.max_drop,
            "drop_mode": config.search.drop_mode.value,
        },
    )
    # fail on bad evaluation data before minutes of sweeping
    load_eval_batch(
        eval_data,
        max_images=config.eval_images,
        imgsz=sweep_config.imgsz,
        num_classes=10**6,
        image_root=sweep_config.image_root,
    )
    sweep_dir = sweep(sweep_config, out=run_dir, progress=progress)
    schemes_dir = make_schemes(
        dataclasses.replace(config.schemes, report=_first_report(sweep_dir, sweep_config)), out=run_dir
    )
    candidates_dir = materialize_candidates(schemes_dir, out=run_dir, progress=progress)
    eval_request = EvalRequest(
        candidates_dir,
        eval_data,
        max_images=config.eval_images,
        latency_runs=config.latency_runs,
        image_root=sweep_config.image_root,
    )
    eval_dir = evaluate_candidates(eval_request, out=run_dir, progress=progress)
    search_scheme(
        dataclasses.replace(config.search, schemes_dir=schemes_dir),
        eval_dir=eval_dir,
        eval_request=eval_request,
        progress=progress,
    )
    build_report(eval_dir)
    return eval_dir
