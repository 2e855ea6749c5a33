"""The GPU check of the ``tensorrt`` target, in one run on a CUDA machine with TensorRT installed.

NOT RUN YET: no session so far had a GPU; nothing in the README or the docs comes from this script.
Without a CUDA GPU or the ``tensorrt`` package it says which is missing and exits with code 2.

1. ``quantsweep run --target tensorrt --device cuda`` on the bundled YOLOv10m at 320 px (sweep on
   CUDA, schemes K in {0, 5, 10}, TensorRT artifacts, engines scored and timed, recommendation),
   and ``quantsweep sweep --method fast --device cuda`` beside it: the two sweeps' wall times.
2. Engines at 320 and 640 px: the FP16 reference (the FP32 ONNX with TensorRT's FP16 flag), every
   planned node INT8, every planned node FP8 (first and depthwise convs INT8), and the run's
   recommended scheme; all timed in the same interleaved rounds (wall clock per call, and the
   CUDA-event time of the engine alone).
3. mAP50-95 at 320 px of each engine on the run's evaluation images, with the project's evaluator.

    python benchmarks/gpu.py [--out runs-gpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from quantsweep.backends import get_backend
from quantsweep.backends.base import conv_kinds
from quantsweep.backends.calibration import RangeCache
from quantsweep.backends.tensorrt_gpu import load_engine
from quantsweep.backends.timing import interleaved_latency
from quantsweep.config import ActDtype, WeightDtype
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.data.shapes import generate_split
from quantsweep.evaluate.scoring import accuracy, detections_of
from quantsweep.export.inspect import node_precisions, precision_label
from quantsweep.export.onnx_model import export_fp32
from quantsweep.models.ultralytics_adapter import BUNDLED_MODEL, load_model
from quantsweep.pipeline.eval_context import EvalRequest, prepare_context
from quantsweep.records import read_json
from quantsweep.schemes.records import Precision

SIZES = (320, 640)
PRECISIONS = {
    "float": Precision(None),
    "int8-int8": Precision(WeightDtype.INT8, ActDtype.INT8),
    "fp8-fp8": Precision(WeightDtype.FP8, ActDtype.FP8),
}


def preflight() -> None:
    """Exit 2 with the reason when this machine cannot build TensorRT engines."""
    reason = None
    if not torch.cuda.is_available():
        reason = "needs a CUDA GPU: torch.cuda.is_available() is false here"
    elif importlib.util.find_spec("tensorrt") is None:
        reason = "needs the tensorrt package: pip install quantsweep[tensorrt]"
    if reason is not None:
        print(f"benchmarks/gpu.py {reason}", file=sys.stderr)
        sys.exit(2)


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quantsweep.cli.main", *argv], check=True)
    return time.perf_counter() - start


def sweeps_on_cuda(out: Path) -> Path:
    """The whole run with the exact sweep, and a fast sweep; print both times; return the run dir."""
    run = ["run", "--target", "tensorrt", "--device", "cuda", "--ks", "0,5,10", "--max-evals", "4"]
    exact = _timed([*run, "--out", str(out)])
    run_dir = max(out.glob("*_run/*"), key=lambda p: p.stat().st_mtime)
    calib = next(run_dir.glob("data/calib/*.yaml"))
    fast = _timed(
        ["sweep", "--images", str(calib), "--device", "cuda", "--method", "fast", "--out", str(out)]
    )
    print(f"run (exact sweep on cuda, whole pipeline): {exact:.1f} s; fast sweep on cuda: {fast:.1f} s")
    return run_dir


def plans(fp32: onnx.ModelProto, recommended: Path) -> dict[str, dict[str, Precision]]:
    """All-INT8, all-FP8 (adapted) and the recommended file's plan, by ONNX node name."""
    kinds, backend = conv_kinds(fp32), get_backend("tensorrt")
    written = {n: PRECISIONS[precision_label(*p)] for n, p in node_precisions(onnx.load(recommended)).items()}
    return {
        "int8": dict.fromkeys(kinds, PRECISIONS["int8-int8"]),
        "fp8": backend.adapt_plan(dict.fromkeys(kinds, PRECISIONS["fp8-fp8"]), kinds),
        "recommended": written,
    }


def engines_at(imgsz: int, recommended: Path, work: Path) -> dict[str, object]:
    """Export at ``imgsz``, write the plans as TensorRT artifacts, and build every engine."""
    path = work / f"fp32_{imgsz}.onnx"
    fp32 = export_fp32(load_model(BUNDLED_MODEL).network, imgsz=imgsz, path=path)
    calib_yaml = generate_split(work / f"c{imgsz}", split="calib", count=16, size=imgsz, split_seed=2)
    ranges = RangeCache(fp32, load_batch(resolve_images(calib_yaml), imgsz=imgsz).images)
    runners = {"fp16": load_engine(path)}
    for name, plan in plans(fp32, recommended).items():
        artifact = work / f"{name}_{imgsz}.onnx"
        onnx.save(get_backend("tensorrt").write(fp32, plan, ranges=ranges), str(artifact))
        start = time.perf_counter()
        runners[name] = load_engine(artifact)
        print(f"{imgsz} px {name}: engine built in {time.perf_counter() - start:.1f} s")
    return runners


def time_and_score(runners: dict, imgsz: int, context) -> None:
    """Interleaved latency (wall and CUDA events) and, at the run's size, mAP of every engine."""
    image = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    timings = interleaved_latency(runners, image, reference="fp16", rounds=7, runs_per_round=20)
    print(f"\n{imgsz} px | engine | median ms | ratio to fp16 | CUDA-event ms | mAP50-95")
    for name, runner in runners.items():
        gpu = []
        for _ in range(50):
            runner(image)
            gpu.append(runner.last_gpu_ms)
        score = ""
        if context is not None and imgsz == context.config.imgsz:
            found = detections_of(runner, context.batch, context.detect)
            score = f"{accuracy(found, batch=context.batch, pseudo=context.pseudo).map50_95_gt:.4f}"
        t = timings[name]
        gpu_ms = statistics.median(gpu)
        print(f"| {name} | {t.median_ms:.3f} | {t.ratio_to_reference:.3f} | {gpu_ms:.3f} | {score} |")


def main() -> None:
    """Run the three steps; print every figure."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs-gpu"))
    args = parser.parse_args()
    preflight()
    run_dir = sweeps_on_cuda(args.out)
    candidates = next(run_dir.glob("*_candidates/*"))
    evaluate = next(run_dir.glob("*_evaluate/*"))
    recommendation = read_json(evaluate / "results" / "tensorrt" / "recommendation.json", "recommendation")
    if recommendation["recommended"] is None:  # no scheme met the accuracy target: time K=10
        print("no tensorrt scheme met the accuracy target; timing k10 in its place")
        recommended = candidates / "tensorrt" / "k10.onnx"
    else:
        recommended = candidates / recommendation["file"]  # an absolute path stays as it is
    print(f"recommended: {recommendation['recommended']} ({recommended})")
    val = next(run_dir.glob("data/val/*.yaml"))
    context, _ = prepare_context(candidates, EvalRequest(candidates, str(val), max_images=100))
    with tempfile.TemporaryDirectory() as tmp:
        for imgsz in SIZES:
            time_and_score(engines_at(imgsz, recommended, Path(tmp)), imgsz, context)


if __name__ == "__main__":
    main()
