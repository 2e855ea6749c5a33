"""What every evaluation of a run shares: the request, the evaluation images, the FP32 reference.

The accuracy reference is the FP32 model in ONNX Runtime on CPU, the same for every target.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantsweep.backends import Backend, get_backend
from quantsweep.config import DetectConfig, SweepConfig
from quantsweep.data.images import Batch, ImageSet, load_batch, resolve_images
from quantsweep.errors import InputError
from quantsweep.evaluate.scoring import Accuracy, accuracy, detections_of, load_checked
from quantsweep.evaluate.target import AccuracyTarget
from quantsweep.export.candidates import FP32_FILE, CandidatesIndex, read_candidates
from quantsweep.metrics.detections import pseudo_labels
from quantsweep.pipeline.common import read_sweep_config
from quantsweep.runs import file_sha256

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


@dataclass
class EvalContext:
    """Everything shared by the evaluations of one run (also used by the scheme search)."""

    config: SweepConfig
    batch: Batch
    detect: DetectConfig
    pseudo: list[np.ndarray]
    reference: Accuracy  # the FP32 model's, in ONNX Runtime on CPU
    image_digest: str

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
        runner = load_checked(backend, path, imgsz=self.config.imgsz)
        return accuracy(detections_of(runner, self.batch, self.detect), batch=self.batch, pseudo=self.pseudo)


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


def _num_classes(output: np.ndarray) -> int:
    if output.shape[-1] == 6 and output.shape[1] != 6:  # end-to-end output carries class indices
        return 10**6
    return int(output.shape[1]) - 4


def prepare_context(candidates_dir: Path, request: EvalRequest) -> tuple[EvalContext, CandidatesIndex]:
    """The candidates index, the evaluation images and the FP32 reference detections."""
    index = read_candidates(candidates_dir)
    config = read_sweep_config(Path(index.sweep_dir))
    fp32 = load_checked(get_backend(REFERENCE_TARGET), Path(candidates_dir) / FP32_FILE, imgsz=config.imgsz)
    probe = fp32(np.zeros((1, 3, config.imgsz, config.imgsz), np.float32))
    image_set, batch = load_eval_batch(
        request.data, max_images=request.max_images, imgsz=config.imgsz, num_classes=_num_classes(probe)
    )
    detections = detections_of(fp32, batch, config.detect)
    pseudo = pseudo_labels(detections, config.detect)
    digest = hashlib.sha256("".join(file_sha256(p) for p in image_set.paths).encode()).hexdigest()
    context = EvalContext(
        config=config,
        batch=batch,
        detect=config.detect,
        pseudo=pseudo,
        reference=accuracy(detections, batch=batch, pseudo=pseudo),
        image_digest=digest,
    )
    return context, index
