"""TensorRT engines of the testbed, the step of ``benchmarks/gpu.py`` that needs the tensorrt package.

Engines at 320 and 640 px: the FP16 reference (the FP32 ONNX with TensorRT's FP16 flag), every
planned node INT8, every planned node FP8 (first and depthwise convs INT8), and the recommended
scheme of a ``quantsweep run --target tensorrt`` run; all timed in the same interleaved rounds (wall
clock per call, and the CUDA-event time of the engine alone); mAP50-95 at the run's size of each
engine on the run's evaluation images, with the project's evaluator.

NEVER RUN: TensorRT's engine-building libraries are not on PyPI (only the lean runtime is; the
builder comes from pypi.nvidia.com, which no machine of this project reaches), so no session could
install them. ``benchmarks/gpu.py`` calls :func:`tensorrt_engines` only when ``import tensorrt`` works.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from quantsweep.core.config import ActDtype, WeightDtype
from quantsweep.core.records import read_json
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.data.shapes import generate_split
from quantsweep.evaluation.scoring import accuracy, detections_of
from quantsweep.models import BUNDLED_MODEL, load_model
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.export import export_fp32
from quantsweep.onnx_graph.inspect import node_precisions, precision_label
from quantsweep.schemes.scheme_records import Precision
from quantsweep.stages.eval_context import EvalRequest, prepare_context
from quantsweep.targets import get_backend
from quantsweep.targets.base import conv_kinds
from quantsweep.targets.tensorrt_gpu import load_engine
from quantsweep.targets.timing import interleaved_latency

SIZES = (320, 640)
PRECISIONS = {
    "float": Precision(None),
    "int8-int8": Precision(WeightDtype.INT8, ActDtype.INT8),
    "fp8-fp8": Precision(WeightDtype.FP8, ActDtype.FP8),
}


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


def tensorrt_engines(run_dir: Path) -> None:
    """Engines of the run's tensorrt candidates (FP16 reference, all INT8, all FP8, recommended)."""
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
