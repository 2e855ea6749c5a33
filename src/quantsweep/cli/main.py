"""``quantsweep`` entry point: ``sweep``, ``layers``, ``schemes``, ``materialize`` and ``run``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from quantsweep import __version__
from quantsweep.cli.args import (
    bundled_model,
    executor_config_from_args,
    parse_ks,
    sweep_config_from_args,
    target_names,
)
from quantsweep.cli.failure import failure_line
from quantsweep.core.config import (
    CalibConfig,
    ComputeDtype,
    HeadMode,
    HighPrecision,
    LowPrecision,
    RankMetric,
    SweepConfig,
    WeightQuantConfig,
    parse_enum_list,
)
from quantsweep.core.errors import InputError
from quantsweep.core.runs import detach_run_logs
from quantsweep.targets import DEFAULT_TARGETS, backend_names

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
LOG = logging.getLogger("quantsweep")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="Ultralytics .pt checkpoint or model .yaml (default: bundled YOLOv10m)"
    )
    parser.add_argument("--imgsz", type=int, default=320, help="square input size, a multiple of 32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--head", default="auto", help="detection branch: auto (as saved), end2end (NMS-free), nms"
    )


def _add_sweep_args(parser: argparse.ArgumentParser) -> None:
    _add_model_args(parser)
    parser.add_argument("--images", help="image folder, .txt list, Ultralytics data .yaml or COCO .json")
    parser.add_argument("--image-root", help="folder of a COCO json's images (default: the json's folder)")
    parser.add_argument(
        "--weights",
        help="weight dtypes: int8,int7,int4,fp8 (default: what the targets run, else int4; the CPU "
        "targets write int7 on x86, exact on CPUs without VNNI too: int8 if every deployment CPU has VNNI)",
    )
    parser.add_argument(
        "--acts",
        help="activation dtypes: fp16 (weight-only),int8,uint8 (asymmetric),fp8 (default: the targets')",
    )
    parser.add_argument("--granularity", help="per_layer,per_channel (default per_channel)")
    parser.add_argument("--int4-block-size", type=int, help="INT4 scales per block of input channels")
    parser.add_argument("--max-images", type=int, default=16, help="calibration images (seeded subset)")
    parser.add_argument(
        "--rank-images",
        type=int,
        default=16,
        help="the first of the calibration images the sweep ranks layers on (default 16); "
        "ranges, quantizer statistics and recovery use all --max-images",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", action="append", default=[], help="glob(s) of layer names to sweep")
    parser.add_argument("--top-k", type=int, default=10, help="length of the report's top table")
    parser.add_argument(
        "--rank-by",
        default=RankMetric.BOX_ERROR.value,
        help=f"ranking metric: {', '.join(m.value for m in RankMetric)}",
    )
    parser.add_argument("--method", default="exact", help="exact, fast (first-order estimate), hybrid")
    parser.add_argument(
        "--hybrid-exact", type=int, help="layers hybrid measures exactly (default 2*top-k+10)"
    )
    _add_quantizer_args(parser)
    parser.add_argument(
        "--pseudo-conf",
        type=float,
        default=0.25,
        help="FP32 detections at or above this confidence are the pseudo-labels",
    )
    parser.add_argument(
        "--compute-dtype",
        help="dtype the sweep runs the network in: float32 (default), float16 (statistics stay float32)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs"), help="parent of run directories")
    parser.add_argument("--resume", type=Path, help="finish an interrupted sweep run directory")


def _add_quantizer_args(parser: argparse.ArgumentParser) -> None:
    """How activations are calibrated and weights quantized and recovered."""
    parser.add_argument(
        "--calib",
        default=CalibConfig().method.value,
        help="activation calibration: max, percentile, mse, entropy",
    )
    parser.add_argument("--percentile", type=float, default=99.99)
    defaults = WeightQuantConfig()
    parser.add_argument(
        "--weight-method", default=defaults.method.value, help="weight rounding: rtn, mse (clipping), gptq"
    )
    parser.add_argument(
        "--weight-symmetry",
        default=defaults.symmetry.value,
        help="weight grids: symmetric (TensorRT), asymmetric (zero points), auto (per channel)",
    )
    parser.add_argument(
        "--bias-correction",
        action=argparse.BooleanOptionalAction,
        default=defaults.bias_correction,
        help="fold the mean output shift on the calibration images into the bias",
    )
    parser.add_argument(
        "--recovery",
        default=defaults.recovery.value,
        help="accuracy recovery with every layer quantized: auto (default: the search distills where "
        "nothing-kept misses the target on a speed target), distill (every artifact), reconstruct "
        "(every artifact), reconstruct+distill, none; distill is a label-free fine-tune of biases "
        "and weight scales, reconstruct re-rounds each block's codes (docs/quantizers.md)",
    )
    parser.add_argument(
        "--recovery-steps",
        type=int,
        default=defaults.recovery_steps,
        help="optimizer steps of 4 calibration images each (distill: in all; reconstruct: per block)",
    )


def _add_target_arg(parser: argparse.ArgumentParser, *, default: tuple[str, ...] = ()) -> None:
    parser.add_argument(
        "--target",
        help=f"deployment targets, comma-separated: {', '.join(backend_names())}"
        + (f" (default {','.join(default)})" if default else ""),
    )


def _add_executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", default="local", help="where layers are measured: local, ray")
    parser.add_argument(
        "--ray-address", help="Ray cluster: auto (running on this machine) or host:port; none starts one"
    )
    parser.add_argument("--ray-workers", type=int, help="Ray workers (default: one per GPU or CPU group)")
    parser.add_argument("--worker-threads", type=int, default=1, help="CPUs (torch threads) per Ray worker")
    parser.add_argument("--shard-layers", type=int, help="layers per Ray shard (default: ~4 per worker)")


def _add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", help="labelled evaluation images: data .yaml, folder, .txt list or COCO .json"
    )
    parser.add_argument("--eval-images", type=int, default=100, help="evaluation images (the first N)")
    parser.add_argument("--latency-rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--latency-runs", type=int, default=5, help="timed runs per model per round")
    parser.add_argument("--max-drop", type=float, default=0.01, help="allowed mAP50-95 drop from FP32")
    parser.add_argument("--drop-mode", default="relative", help="relative or absolute")
    parser.add_argument("--max-evals", type=int, default=24, help="most ONNX evaluations the search may run")
    parser.add_argument(
        "--island-order",
        default="gain-per-ms",
        help="order the search keeps convs float in: gain-per-ms (sensitivity per ms the island costs "
        "on the target's runtime, profiled) or rank (the sweep's ranking)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(prog="quantsweep", description=__doc__)
    parser.add_argument("--version", action="version", version=f"quantsweep {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="measure every layer's sensitivity")
    _add_sweep_args(sweep)
    _add_target_arg(sweep)
    _add_executor_args(sweep)
    _add_model_args(commands.add_parser("layers", help="list quantizable layers"))
    schemes = commands.add_parser("schemes", help="candidate mixed-precision schemes from a sweep report")
    schemes.add_argument("--report", type=Path, required=True, help="layer-sensitivity-report.json")
    schemes.add_argument("--ks", default="0,5,10,20", help="numbers of layers kept at high precision")
    schemes.add_argument("--high", default="float", help="precision of kept layers: float (alias fp16), int8")
    schemes.add_argument(
        "--low", default="auto", help="precision of the other layers: auto (the swept one), int8, int4, fp8"
    )
    schemes.add_argument("--target-bits", type=float, help="also a budget scheme: average weight bits")
    schemes.add_argument("--seed", type=int, default=0, help="seed of the random reference scheme")
    schemes.add_argument("--out", type=Path, default=Path("runs"))
    materialize = commands.add_parser("materialize", help="one verified ONNX per scheme and target")
    materialize.add_argument(
        "--schemes", type=Path, action="append", required=True, help="a schemes run directory (repeatable)"
    )
    _add_target_arg(materialize)
    materialize.add_argument(
        "--writer",
        default="native",
        help="who writes the Q/DQ: native (default) or modelopt (ModelOpt ONNX PTQ; --target tensorrt)",
    )
    materialize.add_argument("--out", type=Path, default=Path("runs"))
    evaluate = commands.add_parser("evaluate", help="score candidates on each target's runtime; search")
    _add_eval_args(evaluate)
    _add_target_arg(evaluate)
    evaluate.add_argument("--image-root", help="folder of a COCO json's images (default: its folder)")
    evaluate.add_argument("--candidates", type=Path, required=True, help="a candidates run directory")
    evaluate.add_argument(
        "--search", action="store_true", help="also search each target's kept layers to --max-drop"
    )
    _add_executor_args(evaluate)
    evaluate.add_argument("--resume", type=Path, help="finish an interrupted evaluate run directory")
    evaluate.add_argument("--out", type=Path, default=Path("runs"))
    report = commands.add_parser("report", help="summary, plots and HTML for an evaluate run")
    report.add_argument("--eval", type=Path, required=True, help="an evaluate run directory")
    run = commands.add_parser("run", help="every stage, on the bundled default or your model and data")
    _add_sweep_args(run)
    _add_eval_args(run)
    _add_target_arg(run, default=DEFAULT_TARGETS)
    # the one-command job measures each combination's fast top 2*top-k+10 exactly (top-10 equal to
    # the exact sweep's on the testbed, README "Fast and hybrid"): it keeps the run under 10 minutes
    run.set_defaults(method="hybrid")
    run.add_argument("--ks", default="0,5,10", help="numbers of layers kept at high precision")
    run.add_argument("--high", default="float", help="precision of kept layers: float (alias fp16), int8")
    run.add_argument(
        "--low", default="auto", help="precision of the other layers: auto (each target's), int8, int4, fp8"
    )
    run.add_argument("--target-bits", type=float, default=4.5, help="budget scheme: average weight bits")
    return parser


def _cmd_sweep(args: argparse.Namespace) -> int:
    from quantsweep import stages  # noqa: PLC0415 (torch import is slow; keep --help fast)
    from quantsweep.cli.progress import tqdm_progress  # noqa: PLC0415

    executor = executor_config_from_args(args)
    if args.resume:
        dtype = None
        if args.compute_dtype:  # given with --resume: it must be the interrupted run's
            (dtype,) = parse_enum_list(args.compute_dtype, ComputeDtype, what="compute dtype")
        run_dir = stages.resume_sweep(
            args.resume, progress=tqdm_progress, executor=executor, compute_dtype=dtype
        )
    else:
        if not args.images:
            raise InputError("--images is required (image folder, .txt list or data .yaml)")
        config = sweep_config_from_args(args, images=args.images, targets=target_names(args))
        run_dir = stages.sweep(config, out=args.out, progress=tqdm_progress, executor=executor)
    print(f"sweep written to {run_dir}")
    print(f"index: {run_dir / 'sweep_index.csv'}")
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from quantsweep.models import load_model  # noqa: PLC0415
    from quantsweep.models.network import enumerate_layers  # noqa: PLC0415
    from quantsweep.stages import check_device  # noqa: PLC0415

    SweepConfig(model="-", images="-", imgsz=args.imgsz)  # validates imgsz
    check_device(args.device)
    (head,) = parse_enum_list(args.head, HeadMode, what="head mode")
    loaded = load_model(args.model or bundled_model(), device=args.device, head=head)
    sample = torch.zeros(1, 3, args.imgsz, args.imgsz, device=args.device)
    layers = enumerate_layers(loaded.network, sample)
    print(
        f"{'#':>4}  {'layer':<36} {'kind':<7} {'weight shape':<18} {'groups':>6} {'params':>9} {'MMACs':>9}"
    )
    for layer in layers:
        shape = "x".join(str(d) for d in layer.weight_shape)
        print(
            f"{layer.exec_order:>4}  {layer.name:<36} {layer.kind:<7} {shape:<18} {layer.groups:>6} "
            f"{layer.params:>9} {layer.macs / 1e6:>9.2f}"
        )
    print(f"{len(layers)} quantizable layers on the inference path at imgsz {args.imgsz}")
    return 0


def _cmd_schemes(args: argparse.Namespace) -> int:
    from quantsweep.stages import SchemesRequest, make_schemes  # noqa: PLC0415

    (high,) = parse_enum_list(args.high, HighPrecision, what="high precision")
    (low,) = parse_enum_list(args.low, LowPrecision, what="low precision")
    request = SchemesRequest(
        report=args.report,
        ks=parse_ks(args.ks),
        high=high,
        low=low,
        target_bits=args.target_bits,
        seed=args.seed,
    )
    run_dir = make_schemes(request, out=args.out)
    print(f"schemes written to {run_dir}")
    print(f"table: {run_dir / 'candidates.md'}")
    return 0


def _cmd_materialize(args: argparse.Namespace) -> int:
    from quantsweep.cli.progress import tqdm_progress  # noqa: PLC0415
    from quantsweep.stages import materialize_candidates  # noqa: PLC0415
    from quantsweep.stages.materialize_stage import MaterializeRequest  # noqa: PLC0415

    targets = target_names(args)
    request = MaterializeRequest(tuple(args.schemes), targets, writer=args.writer)
    run_dir = materialize_candidates(request, out=args.out, progress=tqdm_progress)
    print(f"candidates written to {run_dir}")
    print(f"index: {run_dir / 'candidates.json'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from quantsweep.cli.run import run_default  # noqa: PLC0415

    return run_default(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from quantsweep.cli.run import evaluate_command  # noqa: PLC0415

    return evaluate_command(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from quantsweep.report.build import build_report  # noqa: PLC0415

    summary = build_report(args.eval)
    print(summary.read_text())
    print(f"report: {summary} and {args.eval / 'report.html'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input ends with one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:  # the terminal; run logs keep INFO (runs.attach_run_log)
        handler.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    handlers = {
        "sweep": _cmd_sweep,
        "layers": _cmd_layers,
        "schemes": _cmd_schemes,
        "materialize": _cmd_materialize,
        "evaluate": _cmd_evaluate,
        "report": _cmd_report,
        "run": _cmd_run,
    }
    try:
        return handlers[args.command](args)
    except InputError as exc:
        print(f"quantsweep: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "quantsweep: interrupted; finished results are kept, continue with --resume RUN_DIR",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or a runtime's failure: one line here, the traceback in the log
        print(failure_line(args.command, exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        detach_run_logs()


if __name__ == "__main__":
    sys.exit(main())
