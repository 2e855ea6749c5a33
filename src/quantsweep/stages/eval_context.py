"""What every evaluation of a run shares: the request, the evaluation images, the FP32 reference.

The accuracy reference is the FP32 model in ONNX Runtime on CPU, the same for every target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantsweep.core.config import DetectConfig, SweepConfig
from quantsweep.core.errors import InputError
from quantsweep.data.images import Batch, ImageSet, load_batch, resolve_images
from quantsweep.evaluation.accuracy_target import AccuracyTarget
from quantsweep.evaluation.scoring import (
    Accuracy,
    accuracy,
    coco_class_names,
    detections_of,
    load_checked,
    output_convention,
)
from quantsweep.metrics.detections import pseudo_labels
from quantsweep.onnx_graph.candidates import FP32_FILE, CandidatesIndex, read_candidates
from quantsweep.stages.common import read_sweep_config
from quantsweep.stages.eval_inputs import eval_inputs
from quantsweep.targets import Backend, get_backend

LOG = logging.getLogger(__name__)
REFERENCE_TARGET = "ort-cpu"  # FP32 in ONNX Runtime on CPU is the accuracy reference of every target


@dataclass(frozen=True)
class EvalRequest:
    """Where the candidates are, what to score them on, which targets, and how to time them."""

    candidates_dir: Path
    data: str
    max_images: int = 100
    targets: tuple[str, ...] = ()  # none: every target of the candidates
    latency_rounds: int = 7
    latency_runs: int = 5  # timed runs per model per round
    accuracy_target: AccuracyTarget = field(default_factory=AccuracyTarget)
    image_root: str | None = None  # where a COCO json's images are (default: the json's folder)


@dataclass
class EvalContext:
    """Everything shared by the evaluations of one run (also used by the scheme search)."""

    config: SweepConfig
    batch: Batch
    detect: DetectConfig
    pseudo: list[np.ndarray]
    reference: Accuracy  # the FP32 model's, in ONNX Runtime on CPU
    inputs: dict  # what the evaluation was measured on (stages.eval_inputs), checked on --resume
    # Backend.float_run_key -> the FP32 model's accuracy run that way: measured once per run
    float_scores: dict[str, Accuracy] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """What every model of the run is judged by."""
        return self.reference.judging_metric()

    @property
    def reference_score(self) -> float:
        """The FP32 model's value of :attr:`metric`."""
        return self.reference.value(self.metric)

    def score(self, backend: Backend, path: Path) -> Accuracy:
        """Accuracy of ``path`` run in ``backend``'s runtime."""
        runner = load_checked(backend, path, imgsz=self.config.imgsz, scoring=True)
        found = detections_of(runner, self.batch, self.detect, convention=output_convention(path))
        return accuracy(found, batch=self.batch, pseudo=self.pseudo)


def load_eval_batch(
    data: str,
    *,
    max_images: int,
    imgsz: int,
    num_classes: int,
    image_root: str | None = None,
    class_names: dict[int, str] | None = None,
) -> tuple[ImageSet, Batch]:
    """The first ``max_images`` of ``data`` letterboxed at ``imgsz``; labels checked against the classes.

    A COCO json's categories are mapped by ``class_names`` (see data/coco.py).
    """
    image_set = resolve_images(data, image_root=image_root, class_names=class_names)
    image_set = image_set.subset(count=max_images, seed=None)
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


def _num_classes(output: np.ndarray) -> int:
    if output.shape[-1] == 6 and output.shape[1] != 6:  # end-to-end output carries class indices
        return 10**6
    return int(output.shape[1]) - 4


def check_judgeable(reference: Accuracy, *, images: int, detect: DetectConfig) -> None:
    """Refuse, in one line, an evaluation whose FP32 reference gives nothing to judge by: no mAP
    against the labels and no detection confident enough to be a pseudo-label."""
    judged = reference.value(reference.judging_metric())
    if judged is None or not judged > 0:  # NaN: no pseudo-label to score against
        raise InputError(
            f"the FP32 model detects nothing on the {images} evaluation images "
            f"(mAP50-95 {reference.map50_95_gt or 0:.3f} against the labels, no detection at confidence "
            f">= {detect.pseudo_label_conf}): accuracy cannot be judged; check that --data holds "
            "images of what the model was trained on (a model built from a YAML has random weights)"
        )


def prepare_context(candidates_dir: Path, request: EvalRequest) -> tuple[EvalContext, CandidatesIndex]:
    """The candidates index, the evaluation images and the FP32 reference detections."""
    index = read_candidates(candidates_dir)
    config = read_sweep_config(Path(index.sweep_dir))
    fp32_path = Path(candidates_dir) / FP32_FILE
    fp32 = load_checked(get_backend(REFERENCE_TARGET), fp32_path, imgsz=config.imgsz, scoring=True)
    probe = fp32(np.zeros((1, 3, config.imgsz, config.imgsz), np.float32))
    _, batch = load_eval_batch(
        request.data,
        max_images=request.max_images,
        imgsz=config.imgsz,
        num_classes=_num_classes(probe),
        image_root=request.image_root,
        class_names=coco_class_names(request.data, fp32_path),
    )
    detections = detections_of(fp32, batch, config.detect, convention=output_convention(fp32_path))
    pseudo = pseudo_labels(detections, config.detect)
    inputs = eval_inputs(
        candidates_dir=Path(candidates_dir),
        data=request.data,
        image_root=request.image_root,
        eval_images=request.max_images,
        batch=batch,
    )
    reference = accuracy(detections, batch=batch, pseudo=pseudo)
    check_judgeable(reference, images=len(batch.images), detect=config.detect)
    context = EvalContext(
        config=config,
        batch=batch,
        detect=config.detect,
        pseudo=pseudo,
        reference=reference,
        inputs=inputs,
        float_scores={get_backend(REFERENCE_TARGET).float_run_key(): reference},
    )
    return context, index
