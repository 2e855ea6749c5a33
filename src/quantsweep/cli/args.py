"""Command-line strings to typed values: one function per flag group, no decisions of their own."""

from __future__ import annotations

import argparse

from quantsweep.core.config import (
    ActDtype,
    CalibConfig,
    CalibMethod,
    ComputeDtype,
    DetectConfig,
    DropMode,
    ExecutorConfig,
    ExecutorKind,
    Granularity,
    HeadMode,
    QuantFormat,
    RankMetric,
    Recovery,
    SweepConfig,
    SweepMethod,
    WeightDtype,
    WeightMethod,
    WeightQuantConfig,
    WeightSymmetry,
    parse_enum_list,
)
from quantsweep.core.errors import InputError


def target_names(args: argparse.Namespace) -> tuple[str, ...]:
    """``--target`` as validated names (empty when not given)."""
    from quantsweep.targets import parse_targets  # noqa: PLC0415

    return parse_targets(args.target) if args.target else ()


def parse_ks(text: str) -> tuple[int, ...]:
    """``"0,5,10"`` -> ``(0, 5, 10)``; anything else is an input error."""
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise InputError(f"--ks takes whole numbers separated by commas, got '{text}'") from None
    if not ks or min(ks) < 0:
        raise InputError(f"--ks needs non-negative numbers, got '{text}'")
    return ks


def accuracy_target(args: argparse.Namespace):
    """``--max-drop`` and ``--drop-mode`` as the one accuracy-target type (validated there)."""
    from quantsweep.evaluation.accuracy_target import AccuracyTarget  # noqa: PLC0415

    (mode,) = parse_enum_list(args.drop_mode, DropMode, what="drop mode")
    return AccuracyTarget(max_drop=args.max_drop, mode=mode)


def bundled_model() -> str:
    """The bundled checkpoint's path (imported late: Ultralytics is slow to import)."""
    from quantsweep.models import BUNDLED_MODEL  # noqa: PLC0415 (slow import)

    return str(BUNDLED_MODEL)


def executor_config_from_args(args: argparse.Namespace) -> ExecutorConfig:
    """Parse the executor flags."""
    (kind,) = parse_enum_list(args.executor, ExecutorKind, what="executor")
    return ExecutorConfig(
        kind=kind,
        address=args.ray_address,
        workers=args.ray_workers,
        threads_per_worker=args.worker_threads,
        shard_layers=args.shard_layers,
    )


def _formats(args: argparse.Namespace, targets: tuple[str, ...]) -> tuple[QuantFormat, ...]:
    """The sweep's combinations: as given, else what the targets run, else int4 weight-only."""
    if args.weights is None and args.acts is None and args.granularity is None and targets:
        from quantsweep.targets import sweep_formats  # noqa: PLC0415

        return sweep_formats(targets)
    weights = parse_enum_list(args.weights or "int4", WeightDtype, what="weight dtype")
    acts = parse_enum_list(args.acts or "fp16", ActDtype, what="activation dtype")
    grans = parse_enum_list(args.granularity or "per_channel", Granularity, what="granularity")
    return tuple(
        QuantFormat(
            weight=w,
            act=a,
            granularity=g,
            int4_block_size=args.int4_block_size if w is WeightDtype.INT4 else None,
        )
        for w in weights
        for a in acts
        for g in grans
    )


def sweep_config_from_args(
    args: argparse.Namespace, *, images: str, targets: tuple[str, ...] = ()
) -> SweepConfig:
    """Parse CLI strings into the typed sweep config (``targets``: parsed names, for the formats)."""
    formats = _formats(args, targets)
    (rank_by,) = parse_enum_list(args.rank_by, RankMetric, what="ranking metric")
    (calib,) = parse_enum_list(args.calib, CalibMethod, what="calibration method")
    (head,) = parse_enum_list(args.head, HeadMode, what="head mode")
    (method,) = parse_enum_list(args.method, SweepMethod, what="sweep method")
    (weight_method,) = parse_enum_list(args.weight_method, WeightMethod, what="weight method")
    (symmetry,) = parse_enum_list(args.weight_symmetry, WeightSymmetry, what="weight symmetry")
    (recovery,) = parse_enum_list(args.recovery, Recovery, what="recovery method")
    (compute_dtype,) = parse_enum_list(args.compute_dtype or "float32", ComputeDtype, what="compute dtype")
    patterns = tuple(p.strip() for item in args.layers for p in item.split(",") if p.strip())
    return SweepConfig(
        model=args.model or bundled_model(),
        images=images,
        imgsz=args.imgsz,
        max_images=args.max_images,
        rank_images=args.rank_images,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        head=head,
        formats=formats,
        layer_patterns=patterns,
        top_k=args.top_k,
        rank_by=rank_by,
        method=method,
        hybrid_exact=args.hybrid_exact,
        calib=CalibConfig(method=calib, percentile=args.percentile),
        detect=DetectConfig(pseudo_label_conf=args.pseudo_conf),
        image_root=args.image_root,
        quantizer=WeightQuantConfig(
            method=weight_method,
            symmetry=symmetry,
            bias_correction=args.bias_correction,
            recovery=recovery,
            recovery_steps=args.recovery_steps,
        ),
        compute_dtype=compute_dtype,
    )
