"""``quantsweep run``: parse arguments into a RunConfig and report where the results are."""

from __future__ import annotations

import argparse

from quantsweep.cli.progress import tqdm_progress
from quantsweep.errors import InputError
from quantsweep.workflow import RunConfig, run_job


def parse_ks(text: str) -> tuple[int, ...]:
    """``"0,5,10"`` -> ``(0, 5, 10)``; anything else is an input error."""
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise InputError(f"--ks takes whole numbers separated by commas, got '{text}'") from None
    if not ks or min(ks) < 0:
        raise InputError(f"--ks needs non-negative numbers, got '{text}'")
    return ks


def run_default(args: argparse.Namespace) -> int:
    """Run the whole job; with no arguments, on the bundled model and generated data."""
    from quantsweep.cli.main import sweep_config_from_args  # noqa: PLC0415 (avoid an import cycle)

    if args.images and not args.data:
        raise InputError("--images (calibration) needs --data (labelled evaluation images) too")
    if args.data and not args.images:
        args.images = args.data
    config = RunConfig(
        sweep=sweep_config_from_args(args, images=args.images or "<generated>"),
        eval_data=args.data,
        eval_images=args.eval_images,
        ks=parse_ks(args.ks),
    )
    run_dir = run_job(config, out=args.out, progress=tqdm_progress)
    print((run_dir / "summary.md").read_text())
    print(f"report: {run_dir / 'summary.md'}")
    return 0
