"""``quantsweep run`` and ``quantsweep evaluate``: parse arguments into typed requests, run, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from quantsweep.cli.args import (
    accuracy_target,
    executor_config_from_args,
    parse_ks,
    sweep_config_from_args,
    target_names,
)
from quantsweep.cli.progress import tqdm_progress
from quantsweep.core.config import HighPrecision, IslandOrder, LowPrecision, parse_enum_list
from quantsweep.core.errors import InputError

if TYPE_CHECKING:
    from quantsweep.stages.search_stage import SearchRequest
    from quantsweep.workflow import RunConfig


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")


def search_request(args: argparse.Namespace) -> SearchRequest:
    """The search's settings from the flags ``run`` and ``evaluate`` share."""
    from quantsweep.stages.search_stage import SearchRequest  # noqa: PLC0415

    (order,) = parse_enum_list(args.island_order, IslandOrder, what="island order")
    return SearchRequest(max_evals=args.max_evals, island_order=order)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The ``RunConfig`` of ``quantsweep run`` with these arguments (targets checked for this machine)."""
    from quantsweep.stages import SchemesRequest  # noqa: PLC0415
    from quantsweep.targets import DEFAULT_TARGETS  # noqa: PLC0415
    from quantsweep.workflow import RunConfig, usable_targets  # noqa: PLC0415

    if args.images and not args.data:
        raise InputError("--images (calibration) needs --data (labelled evaluation images) too")
    _positive(args, "max_evals", "latency_rounds", "latency_runs", "eval_images")
    (high,) = parse_enum_list(args.high, HighPrecision, what="high precision")
    (low,) = parse_enum_list(args.low, LowPrecision, what="low precision")
    explicit = args.target is not None
    targets = usable_targets(target_names(args) if explicit else DEFAULT_TARGETS, explicit=explicit)
    return RunConfig(
        sweep=sweep_config_from_args(args, images=args.images or args.data or "<generated>", targets=targets),
        eval_data=args.data,
        schemes=SchemesRequest(
            report=Path("-"),
            ks=parse_ks(args.ks),
            high=high,
            low=low,
            target_bits=args.target_bits,
            seed=args.seed,
        ),
        search=search_request(args),
        targets=targets,
        accuracy_target=accuracy_target(args),
        eval_images=args.eval_images,
        latency_rounds=args.latency_rounds,
        latency_runs=args.latency_runs,
    )


def run_default(args: argparse.Namespace) -> int:
    """Run every stage; with no arguments, on the bundled model and generated data, for every target."""
    from quantsweep.workflow import run_job  # noqa: PLC0415

    eval_dir = run_job(run_config(args), out=args.out, progress=tqdm_progress)
    print((eval_dir / "summary.md").read_text())
    print(f"report: {eval_dir / 'summary.md'} and {eval_dir / 'report.html'}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """Score a candidates directory on each target's runtime; with ``--search`` also search; report."""
    from quantsweep.core.config import ExecutorKind  # noqa: PLC0415
    from quantsweep.execution import create_executor  # noqa: PLC0415
    from quantsweep.report.build import build_report  # noqa: PLC0415
    from quantsweep.stages.eval_context import EvalRequest  # noqa: PLC0415
    from quantsweep.stages.evaluate_stage import evaluate_candidates  # noqa: PLC0415

    if not args.data:
        raise InputError("--data is required (labelled evaluation images)")
    _positive(args, "max_evals", "latency_rounds", "latency_runs", "eval_images")
    if args.target:  # a target named here that cannot run on this machine stops before any work
        from quantsweep.workflow import usable_targets  # noqa: PLC0415

        usable_targets(target_names(args), explicit=True)
    request = EvalRequest(
        args.candidates,
        args.data,
        max_images=args.eval_images,
        targets=target_names(args),
        latency_rounds=args.latency_rounds,
        latency_runs=args.latency_runs,
        accuracy_target=accuracy_target(args),
        image_root=args.image_root,
    )
    search = search_request(args) if args.search else None
    executor_config = executor_config_from_args(args)
    with create_executor(executor_config) as executor:
        eval_dir = evaluate_candidates(
            request,
            out=args.out,
            resume=args.resume,
            search=search,
            progress=tqdm_progress,
            executor=None if executor_config.kind is ExecutorKind.LOCAL else executor,
        )
    summary = build_report(eval_dir)
    print(summary.read_text())
    print(f"report: {summary} and {eval_dir / 'report.html'}")
    return 0
