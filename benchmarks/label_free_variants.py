"""Which label-free criterion follows labelled mAP: measured on many perturbed models (issue 19).

    python benchmarks/label_free_variants.py --model M.pt --calib calib.txt --data data.yaml \\
        [--eval-images 100] [--imgsz 320] [--cache detections.pkl]

The FP32 model and a spread of degraded copies of it run in Torch on the evaluation images:
Gaussian weight noise (std a fraction of each output channel's largest weight), round-to-nearest
INT4 weights on random fractions of the convs, and W8A8 fake quantization (UINT8 inputs
calibrated on ``--calib`` with three calibrators, per-channel and per-tensor INT8 weights, all or
half the convs). For each copy the script prints the relative drop of mAP50-95 against the labels
and of each label-free candidate computed from the FP32 model's own detections:

- ``pl0.25`` (quantsweep's default): mAP50-95 against the FP32 detections at confidence >= 0.25;
- ``pl0.5``: the same at >= 0.5; ``pl0.25_50``: mAP50 only (IoU 0.5);
- ``w``: expected mAP50-95 if each FP32 detection (confidence >= 0.05) is a real object with
  probability equal to its confidence (a match earns that probability as a true positive, the rest
  as a false positive); ``w_p2``: with the squared confidence.

Then per family of copies: correlation with the labelled drop, the labelled drop per unit of the
label-free drop (least squares through 0, copies under 5%), and how often "label-free drop <= t"
gives the same verdict as "labelled drop <= 1%" (wrong passes, wrong fails). Torch, not the
targets' runtimes: the question is about the metric, not about execution.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import torch

from quantsweep.core.config import (
    ActDtype,
    CalibConfig,
    CalibMethod,
    DetectConfig,
    Granularity,
    QuantFormat,
    SweepConfig,
    WeightDtype,
)
from quantsweep.core.runs import cpu_line
from quantsweep.data.images import Batch, load_batch, resolve_images
from quantsweep.metrics.detections import decode, pseudo_labels
from quantsweep.metrics.map import IOU_THRESHOLDS, _average_precision, box_iou, mean_average_precision
from quantsweep.models import load_model
from quantsweep.quant.apply import quantized_layers
from quantsweep.stages.common import calibrate

NOISE = (0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.024)
INT4_FRACTIONS = (0.05, 0.1, 0.2, 0.35)
THRESHOLDS = (0.01, 0.015, 0.02, 0.03)
_CHUNK = 10


class Variants:
    """The FP32 model and its degraded copies, run on the evaluation images."""

    def __init__(self, model: str, *, images: torch.Tensor, calib: torch.Tensor) -> None:
        self.model = model
        self.network = load_model(model).network  # a user-given checkpoint (torch.load: a pickle)
        self.module = self.network.module
        self.images, self.calib = images, calib
        self.convs = [n for n, m in self.module.named_modules() if isinstance(m, torch.nn.Conv2d)]

    def detections(self) -> list[np.ndarray]:
        """Detections of the model as it is now."""
        found: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(self.images), _CHUNK):
                found += decode(self.network.run(self.images[start : start + _CHUNK])[0], DetectConfig())
        return found

    def noisy(self, sigma: float, seed: int) -> list[np.ndarray]:
        """Detections with Gaussian noise on every conv weight (std ``sigma`` x the channel's max)."""
        generator = torch.Generator().manual_seed(seed)
        saved = {n: self.module.get_submodule(n).weight.data for n in self.convs}
        try:
            for name, weight in saved.items():
                peak = weight.abs().flatten(1).amax(1).view(-1, *[1] * (weight.dim() - 1))
                noise = torch.randn(weight.shape, generator=generator) * sigma * peak
                self.module.get_submodule(name).weight.data = weight + noise
            return self.detections()
        finally:
            for name, weight in saved.items():
                self.module.get_submodule(name).weight.data = weight

    def some_convs(self, fraction: float, seed: int) -> list[str]:
        """A seeded random ``fraction`` of the convs."""
        count = max(1, int(fraction * len(self.convs)))
        return list(np.random.default_rng(seed).choice(self.convs, size=count, replace=False))

    def ranges(self, method: CalibMethod) -> dict:
        """Input ranges of every conv over the calibration images, as the sweep calibrates them."""
        config = SweepConfig(model=self.model, images="-", calib=CalibConfig(method=method))
        return calibrate(self.network, Batch(self.calib, None), config, self.convs)

    def quantized(self, names: list[str], fmt: QuantFormat, ranges: dict | None = None) -> list[np.ndarray]:
        """Detections with ``names`` fake-quantized to ``fmt``."""
        with quantized_layers(self.module, dict.fromkeys(names, fmt), act_ranges=ranges):
            return self.detections()


def collect(variants: Variants) -> dict[str, dict[str, list[np.ndarray]]]:
    """``{family: {copy: detections}}`` plus the FP32 detections under ``fp32``."""
    found: dict[str, dict[str, list[np.ndarray]]] = {"fp32": {"fp32": variants.detections()}}
    found["noise"] = {f"noise{s}_seed{k}": variants.noisy(s, k) for s in NOISE for k in (0, 1)}
    int4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)
    found["int4"] = {
        f"int4_{f}_seed{k}": variants.quantized(variants.some_convs(f, k), int4)
        for f in INT4_FRACTIONS
        for k in (0, 1, 2)
    }
    found["w8a8"] = {}
    for method in (CalibMethod.MSE, CalibMethod.MAX, CalibMethod.PERCENTILE):
        ranges = variants.ranges(method)
        for granularity in (Granularity.PER_CHANNEL, Granularity.PER_LAYER):
            fmt = QuantFormat(WeightDtype.INT8, ActDtype.UINT8, granularity)
            for fraction, seed in ((1.0, 0), (0.5, 1), (0.5, 2)):
                names = variants.convs if fraction == 1.0 else variants.some_convs(fraction, seed)
                key = f"w8a8_{method.value}_{granularity.value}_{fraction}_seed{seed}"
                found["w8a8"][key] = variants.quantized(names, fmt, ranges)
    return found


def weighted_map(predictions: list[np.ndarray], reference: list[np.ndarray], *, power: float = 1.0) -> float:
    """Expected mAP50-95 if each reference detection (confidence >= 0.05) is a real object with
    probability ``confidence ** power``: a match earns that probability as a true positive."""
    hits, confs, classes, totals = [], [], [], {}
    for pred, every_ref in zip(predictions, reference, strict=True):
        ref = every_ref[every_ref[:, 4] >= 0.05]
        weight = ref[:, 4] ** power
        for cls in np.unique(ref[:, 5]):
            totals[cls] = totals.get(cls, 0.0) + weight[ref[:, 5] == cls].sum()
        hit = np.zeros((len(pred), len(IOU_THRESHOLDS)))
        if len(pred) and len(ref):
            iou = box_iou(ref[:, :4], pred[:, :4]) * (ref[:, 5:6] == pred[None, :, 5])
            claimed = np.zeros((len(ref), len(IOU_THRESHOLDS)), bool)
            for j in np.argsort(-pred[:, 4], kind="stable"):
                available = np.where(claimed, 0.0, iou[:, j, None])
                best = available.argmax(0)
                matched = available[best, np.arange(len(IOU_THRESHOLDS))] >= IOU_THRESHOLDS
                hit[j] = np.where(matched, weight[best], 0.0)
                claimed[best, np.arange(len(IOU_THRESHOLDS))] |= matched
        hits.append(hit)
        confs.append(pred[:, 4])
        classes.append(pred[:, 5])
    order = np.argsort(-np.concatenate(confs), kind="stable")
    hit, cls_of = np.concatenate(hits)[order], np.concatenate(classes)[order]
    ap = []
    for cls, total in totals.items():
        mine = hit[cls_of == cls]
        true_pos = mine.cumsum(0)
        precision = true_pos / np.arange(1, len(mine) + 1)[:, None]
        ap.append(
            [_average_precision(true_pos[:, t] / total, precision[:, t]) for t in range(len(IOU_THRESHOLDS))]
        )
    return float(np.mean(ap))


def criteria(dets: list[np.ndarray], fp32: list[np.ndarray]) -> dict[str, float]:
    """Every label-free candidate's value for ``dets`` against the FP32 detections."""
    values = {}
    for conf in (0.25, 0.5):
        result = mean_average_precision(dets, pseudo_labels(fp32, DetectConfig(pseudo_label_conf=conf)))
        values[f"pl{conf}"] = result.map50_95
        if conf == 0.25:
            values["pl0.25_50"] = result.map50
    values["w"] = weighted_map(dets, fp32)
    values["w_p2"] = weighted_map(dets, fp32, power=2.0)
    return values


def drops(found: dict, labels: list[np.ndarray]) -> dict[str, list[tuple[str, float, dict[str, float]]]]:
    """Per family: ``(copy, labelled relative drop, {criterion: relative drop})``."""
    fp32 = found["fp32"]["fp32"]
    base_gt = mean_average_precision(fp32, labels).map50_95
    base = criteria(fp32, fp32)
    out = {}
    for family, copies in found.items():
        if family == "fp32":
            continue
        out[family] = []
        for name, dets in copies.items():
            labelled = 1 - mean_average_precision(dets, labels).map50_95 / base_gt
            free = {k: 1 - v / base[k] for k, v in criteria(dets, fp32).items()}
            out[family].append((name, labelled, free))
    return out


def report(per_family: dict) -> None:
    """Print the copies, then per family and criterion: correlation, slope, verdicts."""
    for family, rows in per_family.items():
        keys = list(rows[0][2])
        print(f"\n{family}: relative drops in % (labelled, then each label-free criterion)")
        print(f"{'copy':40s} {'labelled':>8s} " + " ".join(f"{k:>9s}" for k in keys))
        for name, labelled, free in rows:
            print(f"{name:40s} {labelled * 100:8.2f} " + " ".join(f"{free[k] * 100:9.2f}" for k in keys))
        labelled = np.array([r[1] for r in rows])
        for key in keys:
            free = np.array([r[2][key] for r in rows])
            small = labelled < 0.05
            slope = (free[small] @ labelled[small]) / (free[small] @ free[small])
            verdicts = " ".join(
                f"<={t:.1%}: ({int(((free <= t) & (labelled > 0.01)).sum())}, "
                f"{int(((free > t) & (labelled <= 0.01)).sum())})"
                for t in THRESHOLDS
            )
            corr = np.corrcoef(free, labelled)[0, 1]
            print(f"  {key:9s} corr {corr:.3f}  labelled ~ {slope:.2f} x label-free  {verdicts}")


def main() -> None:
    """Collect (or read the cached) detections, then print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--calib", required=True, help="calibration images (a folder or .txt list)")
    parser.add_argument("--data", required=True, help="labelled evaluation data (data YAML)")
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--cache", type=Path, help="detections pickle: written if absent, else read")
    args = parser.parse_args()
    torch.set_num_threads(2)
    batch = load_batch(resolve_images(args.data).subset(count=args.eval_images, seed=None), imgsz=args.imgsz)
    if args.cache and args.cache.is_file():
        found = pickle.loads(args.cache.read_bytes())  # a file this script wrote
    else:
        calib = load_batch(resolve_images(args.calib), imgsz=args.imgsz).images
        found = collect(Variants(args.model, images=batch.images, calib=calib))
        if args.cache:
            args.cache.write_bytes(pickle.dumps(found))
    print(f"{args.model}; {cpu_line()}; (wrong passes, wrong fails) against 'labelled drop <= 1%'")
    report(drops(found, batch.labels))


if __name__ == "__main__":
    main()
