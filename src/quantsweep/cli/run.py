"""``quantsweep run`` and ``quantsweep evaluate``: parse arguments into typed requests, run, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantsweep.cli.progress import tqdm_progress
from quantsweep.config import DropMode, HighPrecision, LowPrecision, parse_enum_list
from quantsweep.errors import InputError


def parse_ks(text: str) -> tuple[int, ...]:
    """``"0,5,10"`` -> ``(0, 5, 10)``; anything else is an input error."""
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise InputError(f"--ks takes whole numbers separated by commas, got '{text}'") from None
    if not ks or min(ks) < 0:
        raise InputError(f"--ks needs non-negative numbers, got '{text}'")
    return ks


def _search_request(args: argparse.Namespace, schemes_dir: Path):
    from quantsweep.pipeline.search_stage import SearchRequest  # noqa: PLC0415

    (mode,) = parse_enum_list(args.drop_mode, DropMode, what="drop mode")
    if not (0 < args.max_drop < 1):
        raise InputError(f"--max-drop must be between 0 and 1, got {args.max_drop}")
    return SearchRequest(
        schemes_dir=schemes_dir, max_drop=args.max_drop, drop_mode=mode, max_evals=args.max_evals
    )


def run_default(args: argparse.Namespace) -> int:
    """Run every stage; with no arguments, on the bundled model and generated data."""
    from quantsweep.cli.main import sweep_config_from_args  # noqa: PLC0415 (avoid an import cycle)
    from quantsweep.pipeline import SchemesRequest  # noqa: PLC0415
    from quantsweep.workflow import RunConfig, run_job  # noqa: PLC0415

    if args.images and not args.data:
        raise InputError("--images (calibration) needs --data (labelled evaluation images) too")
    (high,) = parse_enum_list(args.high, HighPrecision, what="high precision")
    (low,) = parse_enum_list(args.low, LowPrecision, what="low precision")
    config = RunConfig(
        sweep=sweep_config_from_args(args, images=args.images or args.data or "<generated>"),
        eval_data=args.data,
        schemes=SchemesRequest(
            report=Path("-"),
            ks=parse_ks(args.ks),
            high=high,
            low=low,
            target_bits=args.target_bits,
            seed=args.seed,
        ),
        search=_search_request(args, Path("-")),
        eval_images=args.eval_images,
        latency_runs=args.latency_runs,
    )
    eval_dir = run_job(config, out=args.out, progress=tqdm_progress)
    print((eval_dir / "summary.md").read_text())
    print(f"report: {eval_dir / 'summary.md'} and {eval_dir / 'report.html'}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """Score a candidates directory; with ``--schemes`` also search; then write the report."""
    from quantsweep.pipeline.evaluate_stage import EvalRequest, evaluate_candidates  # noqa: PLC0415
    from quantsweep.pipeline.search_stage import search_scheme  # noqa: PLC0415
    from quantsweep.report.build import build_report  # noqa: PLC0415

    if not args.data:
        raise InputError("--data is required (labelled evaluation images)")
    (mode,) = parse_enum_list(args.drop_mode, DropMode, what="drop mode")
    request = EvalRequest(
        args.candidates,
        args.data,
        max_images=args.eval_images,
        latency_runs=args.latency_runs,
        image_root=args.image_root,
    )
    search = _search_request(args, args.schemes) if args.schemes else None
    eval_dir = evaluate_candidates(request, out=args.out, resume=args.resume, progress=tqdm_progress)
    if search is not None:
        search_scheme(search, eval_dir=eval_dir, eval_request=request, progress=tqdm_progress)
    summary = build_report(eval_dir, max_drop=args.max_drop, relative=mode is DropMode.RELATIVE)
    print(summary.read_text())
    print(f"report: {summary} and {eval_dir / 'report.html'}")
    return 0
