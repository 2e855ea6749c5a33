"""The evaluate stage: every artifact of a candidates run scored in ONNX Runtime, one JSON each."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from quantsweep.config import DetectConfig, SweepConfig
from quantsweep.data.images import Batch, ImageSet, load_batch, resolve_images
from quantsweep.errors import InputError
from quantsweep.evaluate.onnx_eval import OnnxDetector, accuracy, available_providers, detections_of
from quantsweep.export.inspect import average_weight_bits
from quantsweep.metrics.detections import pseudo_labels
from quantsweep.pipeline.common import ProgressFactory, no_progress, read_sweep_config
from quantsweep.records import read_json, write_json
from quantsweep.runs import environment, new_run_dir

if TYPE_CHECKING:
    from quantsweep.executors import Executor

LOG = logging.getLogger(__name__)
RESULT_KIND = "candidate_result"


@dataclass(frozen=True)
class EvalRequest:
    """Where the candidates are, what to score them on, and how long to time them."""

    candidates_dir: Path
    data: str
    max_images: int = 100
    latency_runs: int = 20


@dataclass
class EvalContext:
    """Everything shared by the evaluations of one run (also used by the scheme search)."""

    config: SweepConfig
    batch: Batch
    detect: DetectConfig
    pseudo: list[np.ndarray]
    fp32_map50_95_gt: float | None
    fp32_map50_95_vs_fp32: float


def load_eval_batch(data: str, *, max_images: int, imgsz: int, num_classes: int) -> tuple[ImageSet, Batch]:
    """The first ``max_images`` of ``data`` letterboxed at ``imgsz``; labels checked against the classes."""
    image_set = resolve_images(data).subset(count=max_images, seed=None)
    with_labels = sum(p is not None for p in image_set.label_paths)
    if 0 < with_labels < len(image_set.paths):
        raise InputError(
            f"{len(image_set.paths) - with_labels} of {len(image_set.paths)} evaluation images "
            "have no label file"
        )
    batch = load_batch(image_set, imgsz=imgsz)
    for path, labels in zip(image_set.label_paths, batch.labels or [], strict=False):
        if len(labels) and (labels[:, 0].max() >= num_classes or labels[:, 0].min() < 0):
            raise InputError(
                f"labels in {path} use class {int(labels[:, 0].max())}, but the model has "
                f"{num_classes} classes: labels do not match this model's data"
            )
    return image_set, batch


def _num_classes(fp32: OnnxDetector) -> int:
    shape = fp32.session.get_outputs()[0].shape
    if shape[-1] == 6:  # end-to-end output carries class indices, not scores
        return 10**6
    return int(shape[1]) - 4


def prepare_context(candidates_dir: Path, request: EvalRequest) -> tuple[EvalContext, OnnxDetector, dict]:
    """Load the candidates index, the eval images and the FP32 reference detections."""
    index_path = candidates_dir / "candidates.json"
    if not index_path.is_file():
        raise InputError(f"{candidates_dir} is not a candidates directory (no candidates.json)")
    index = read_json(index_path, "candidates_index")
    if not index["artifacts"]:
        raise InputError(f"{candidates_dir} holds no candidate models")
    config = read_sweep_config(Path(index["sweep_dir"]))
    fp32 = OnnxDetector(candidates_dir / "fp32.onnx", imgsz=config.imgsz)
    _, batch = load_eval_batch(
        request.data, max_images=request.max_images, imgsz=config.imgsz, num_classes=_num_classes(fp32)
    )
    detections = detections_of(fp32, batch, config.detect)
    pseudo = pseudo_labels(detections, config.detect)
    ref = accuracy(detections, batch=batch, pseudo=pseudo)
    context = EvalContext(
        config=config,
        batch=batch,
        detect=config.detect,
        pseudo=pseudo,
        fp32_map50_95_gt=ref.map50_95_gt,
        fp32_map50_95_vs_fp32=ref.map50_95_vs_fp32,
    )
    return context, fp32, index


def score_artifact(path: Path, context: EvalContext, *, latency_runs: int) -> dict[str, Any]:
    """Accuracy (CPU provider) and latency on every available provider of one ONNX file."""
    detector = OnnxDetector(path, imgsz=context.config.imgsz)
    acc = accuracy(
        detections_of(detector, context.batch, context.detect), batch=context.batch, pseudo=context.pseudo
    )
    latencies = []
    for provider in available_providers():
        timed = (
            detector
            if provider == "CPUExecutionProvider"
            else OnnxDetector(path, provider=provider, imgsz=context.config.imgsz)
        )
        latencies.append(timed.latency(context.batch.images[0], runs=latency_runs).__dict__)
    result = {
        "accuracy": acc.to_dict(),
        "latency": latencies,
        "size_bytes": path.stat().st_size,
        "avg_weight_bits": average_weight_bits(onnx.load(str(path))),
    }
    if context.fp32_map50_95_gt is not None and acc.map50_95_gt is not None:
        result["drop_gt"] = context.fp32_map50_95_gt - acc.map50_95_gt
        result["relative_drop_gt"] = (
            result["drop_gt"] / context.fp32_map50_95_gt if context.fp32_map50_95_gt > 0 else None
        )
    result["drop_vs_fp32"] = context.fp32_map50_95_vs_fp32 - acc.map50_95_vs_fp32
    return result


def _score_file(path: str, *, context: EvalContext, latency_runs: int) -> dict[str, Any]:
    return score_artifact(Path(path), context, latency_runs=latency_runs)


def _score_on(executor: Executor, artifacts: list[dict], request: EvalRequest, context, results_dir: Path):
    """One task per unscored artifact on ``executor``; each result written as it arrives, with the
    host and device whose runtime measured its latency. Workers read the artifact at the driver's
    path (on several machines, the candidates directory must be on a shared filesystem)."""
    missing = [a for a in artifacts if not (results_dir / f"{a['name']}.json").exists()]
    paths = [str(Path(request.candidates_dir) / a["file"]) for a in missing]
    fn = partial(_score_file, context=context, latency_runs=request.latency_runs)
    for done in executor.map_tasks(fn, paths):
        artifact = missing[done.index]
        worker = {"host": done.host, "device": done.device, "elapsed_s": done.elapsed_s}
        write_json(
            results_dir / f"{artifact['name']}.json",
            RESULT_KIND,
            {**artifact, **done.value, "worker": worker},
        )


def evaluate_candidates(
    request: EvalRequest,
    *,
    out: Path | None,
    resume: Path | None = None,
    progress: ProgressFactory = no_progress,
    executor: Executor | None = None,
) -> Path:
    """Score every artifact into ``results/<name>.json`` of a new (or resumed) run directory.

    With an ``executor``, artifacts are scored as its tasks (e.g. one Ray task each) first.
    """
    if resume is not None and not (Path(resume) / "eval_config.json").is_file():
        raise InputError(f"{resume} is not an evaluate run directory (no eval_config.json)")
    context, _fp32, index = prepare_context(Path(request.candidates_dir), request)
    if resume is None:
        run_dir = new_run_dir(out, model_name=Path(context.config.model).stem, stage="evaluate")
        write_json(
            run_dir / "eval_config.json",
            "eval_config",
            {
                "candidates_dir": str(request.candidates_dir),
                "data": request.data,
                "max_images": request.max_images,
                "latency_runs": request.latency_runs,
                "detect": context.detect.__dict__,
                "providers": available_providers(),
            },
        )
        write_json(run_dir / "environment.json", "environment", environment())
    else:
        run_dir = resume
    results_dir = run_dir / "results"
    if executor is not None:
        _score_on(executor, index["artifacts"], request, context, results_dir)
    with progress(len(index["artifacts"]), "evaluate") as step:
        for artifact in index["artifacts"]:
            target = results_dir / f"{artifact['name']}.json"
            if not target.exists():
                scored = score_artifact(
                    Path(request.candidates_dir) / artifact["file"],
                    context,
                    latency_runs=request.latency_runs,
                )
                write_json(target, RESULT_KIND, {**artifact, **scored})
            step(artifact["name"])
    return run_dir
