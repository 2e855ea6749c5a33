"""What the benchmarks share: the testbed model, its calibration and validation images, ranges."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy.stats import spearmanr

from quantsweep.core.config import CalibConfig, CalibMethod, DetectConfig, QuantFormat
from quantsweep.data.images import Batch, load_batch, resolve_images
from quantsweep.data.shapes import generate_split
from quantsweep.models import BUNDLED_MODEL, load_model
from quantsweep.models.network import LayerInfo, StagedNetwork, enumerate_layers
from quantsweep.quant.apply import calibrate_inputs
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.ranking_check import evaluate_kept

IMGSZ = 320
CALIB_IMAGES = 16
VAL_IMAGES = 100


@dataclass
class Testbed:
    """The bundled YOLOv10m with 16 calibration and 100 validation images, max-calibrated ranges."""

    network: StagedNetwork
    layers: list[LayerInfo]
    calib: Batch
    val: Batch
    act_ranges: dict[str, float]

    @property
    def names(self) -> list[str]:
        """Layer names in execution order."""
        return [layer.name for layer in self.layers]


def top(scores: dict[str, float], k: int = 10) -> list[str]:
    """The ``k`` highest-scoring names (ties by name)."""
    return sorted(scores, key=lambda n: (-scores[n], n))[:k]


def load_testbed(
    *,
    model: str | Path = BUNDLED_MODEL,
    batch_size: int = 8,
    device: str = "cpu",
    imgsz: int = IMGSZ,
    calib_images: int = CALIB_IMAGES,
) -> Testbed:
    """Generate the images (calibration: split seed 2; validation: the testbed's val split) and load
    the model on ``device`` (the images stay on the CPU; the sweep moves each chunk)."""
    with tempfile.TemporaryDirectory() as tmp:
        calib_yaml = generate_split(
            Path(tmp) / "c", split="calib", count=calib_images, size=imgsz, split_seed=2
        )
        val_yaml = generate_split(Path(tmp) / "v", split="val", count=VAL_IMAGES, size=imgsz, split_seed=1)
        calib = load_batch(resolve_images(calib_yaml), imgsz=imgsz)
        val = load_batch(resolve_images(val_yaml), imgsz=imgsz)
    network = load_model(model, device=device).network
    layers = enumerate_layers(network, calib.images[:1].to(device))

    def drive():
        with torch.no_grad():
            for i in range(0, len(calib.images), batch_size):
                network.run(calib.images[i : i + batch_size].to(device))
                yield None

    ranges = calibrate_inputs(
        network.module, [x.name for x in layers], drive(), calib=CalibConfig(method=CalibMethod.MAX)
    )
    return Testbed(network=network, layers=layers, calib=calib, val=val, act_ranges=ranges)


def forward_seconds(
    network: StagedNetwork, images: torch.Tensor, *, batch_size: int = 8, repeats: int = 3
) -> float:
    """Median time of one full forward pass over ``images``, after one untimed warm-up pass.

    ``images`` must be on the network's device (and in its dtype); CUDA work is waited for.
    """
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            _sync(images)
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                network.run(images[i : i + batch_size])
            _sync(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _sync(images: torch.Tensor) -> None:
    if images.is_cuda:
        torch.cuda.synchronize(images.device)


def naive_per_layer(
    engine: ExactSweep, layers: list[LayerInfo], fmt: QuantFormat, *, act_ranges=None, sample: int = 10
) -> float:
    """Seconds per layer of the naive method on a spread sample of ``layers``: a full forward pass
    per layer (no prefix reuse) plus the same metrics as the exact sweep."""
    chosen = layers[:: max(1, len(layers) // sample)][:sample]
    start = time.perf_counter()
    for layer in chosen:
        output = engine.run_quantized({layer.name: fmt}, start_block=0, act_ranges=act_ranges)
        engine.score(layer.name, output, started=start)
    return (time.perf_counter() - start) / len(chosen)


def compare(bed: Testbed, fmt: QuantFormat, exact: dict[str, float], scores: dict[str, float]) -> tuple:
    """(Spearman vs exact, top-10 overlap, mAP50-95 on the val images with this ranking's top 10 kept)."""
    names = bed.names
    rho = spearmanr([exact[n] for n in names], [scores[n] for n in names]).statistic
    overlap = len(set(top(scores)) & set(top(exact)))
    kept = evaluate_kept(
        bed.network,
        bed.val,
        layers=bed.layers,
        fmt=fmt,
        kept=set(top(scores)),
        batch_size=25,
        detect=DetectConfig(),
        act_ranges=bed.act_ranges,
    )
    return rho, overlap, kept.map50_95
