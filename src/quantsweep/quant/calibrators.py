"""Activation calibrators: per-tensor ranges of each layer's input over the calibration images.

Every method yields an :class:`ActRange`: ``(lo, hi)`` for asymmetric UINT8 and ``amax`` for the
symmetric types (INT8, FP8), each chosen for its own grid.

- ``max``: the observed extremes.
- ``percentile``: the per-batch percentile of ``|x|`` (symmetric) and of ``x`` at both ends
  (asymmetric), averaged over batches.
- ``mse``: the clipping that minimises the INT8 (or UINT8) quantization error of the inputs.
- ``entropy``: TensorRT's KL-divergence calibration: the clipping whose 128-level (symmetric) or
  256-level (asymmetric, from the observed minimum up) histogram stays closest to the full one.

``mse`` and ``entropy`` work on a strided sample of each batch (65536 values per batch and
layer), which estimates a tensor's error without keeping its activations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantsweep.core.config import ActDtype, CalibConfig, CalibMethod
from quantsweep.core.records import read_json, write_json
from quantsweep.quant.numerics import ActRange, act_qparams, fake_quant_act

_SAMPLES_PER_BATCH = 1 << 16
_PERCENTILE_SAMPLE = 1 << 24  # torch.quantile refuses larger inputs
_MSE_RATIOS = torch.linspace(0.02, 1.0, 99)
_HIST_BINS = 2048
RECORD_FORMAT = "min_max_amax"


def _strided(flat: torch.Tensor, limit: int) -> torch.Tensor:
    return flat if flat.numel() <= limit else flat[:: -(-flat.numel() // limit)]


class Calibrator:
    """What one layer's inputs tell a calibration method, accumulated batch by batch; the base
    keeps the observed extremes, each method adds what it needs and turns it into a range."""

    def __init__(self, calib: CalibConfig) -> None:
        self.calib = calib
        self.lo, self.hi = float("inf"), float("-inf")

    def add(self, x: torch.Tensor) -> None:
        """Take one batch of the layer's input."""
        flat = x.detach().flatten().float()
        lo, hi = torch.stack(torch.aminmax(flat)).tolist()  # one device sync, not two
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self._add(flat)

    def _add(self, flat: torch.Tensor) -> None:
        """What the method keeps of a batch beyond its extremes (nothing for ``max``)."""

    @property
    def amax(self) -> float:
        """The largest magnitude seen."""
        return max(abs(self.lo), abs(self.hi))

    def result(self) -> ActRange:
        """The calibrated range (``max``: the observed extremes)."""
        return ActRange(self.lo, self.hi, self.amax)


class PercentileCalibrator(Calibrator):
    """Per-batch percentiles of ``|x|`` and of ``x`` at both ends, averaged over batches."""

    def __init__(self, calib: CalibConfig) -> None:
        super().__init__(calib)
        self.percentiles: list[tuple[float, float, float]] = []

    def _add(self, flat: torch.Tensor) -> None:
        sample = _strided(flat, _PERCENTILE_SAMPLE)
        p = self.calib.percentile / 100.0
        qs = torch.quantile(sample, torch.tensor([1.0 - p, p], device=sample.device))
        amax = torch.quantile(sample.abs(), p)
        self.percentiles.append(tuple(torch.stack((amax, qs[0], qs[1])).tolist()))

    def result(self) -> ActRange:
        values = np.array(self.percentiles).mean(axis=0)
        return ActRange(float(values[1]), float(values[2]), float(values[0]))


class MseCalibrator(Calibrator):
    """The clipping that minimises the INT8 (or UINT8) error of a strided sample of the inputs."""

    def __init__(self, calib: CalibConfig) -> None:
        super().__init__(calib)
        self.samples: list[torch.Tensor] = []

    def _add(self, flat: torch.Tensor) -> None:
        # kept on the layer's device: the search over clipping ratios runs there too; a copy, since
        # a strided view would keep the whole activation alive (every layer's, every batch's: 19
        # GiB after a minute at 640 px)
        self.samples.append(_strided(flat, _SAMPLES_PER_BATCH).clone())

    def result(self) -> ActRange:
        samples = torch.cat(self.samples)
        return ActRange(*_mse_asymmetric(samples, self.lo, self.hi), _mse_symmetric(samples, self.amax))


class EntropyCalibrator(MseCalibrator):
    """TensorRT's KL-divergence clipping, on the same strided sample."""

    def result(self) -> ActRange:
        samples = torch.cat(self.samples)
        return ActRange(self.lo, _entropy_hi(samples, self.lo, self.hi), _entropy_amax(samples, self.amax))


# one class per method: a new calibration method is one class and one entry here
CALIBRATORS: dict[CalibMethod, type[Calibrator]] = {
    CalibMethod.MAX: Calibrator,
    CalibMethod.PERCENTILE: PercentileCalibrator,
    CalibMethod.MSE: MseCalibrator,
    CalibMethod.ENTROPY: EntropyCalibrator,
}


def _quant_error(samples: torch.Tensor, ranges: Sequence[ActRange], act: ActDtype) -> torch.Tensor:
    errors = []
    for rng in ranges:
        scale, zero = act_qparams(rng, act)
        q = fake_quant_act(samples, scale=scale, act=act, zero_point=zero)
        errors.append((q - samples).pow(2).mean())
    return torch.stack(errors)


def _mse_symmetric(samples: torch.Tensor, amax: float) -> float:
    ranges = [ActRange.symmetric(amax * float(r)) for r in _MSE_RATIOS]
    return ranges[int(_quant_error(samples, ranges, ActDtype.INT8).argmin())].amax


def _mse_asymmetric(samples: torch.Tensor, lo: float, hi: float) -> tuple[float, float]:
    """Shrink both ends together, then the top end alone (activations are skewed upwards)."""
    both = [ActRange(lo * float(r), hi * float(r), 0.0) for r in _MSE_RATIOS]
    best = both[int(_quant_error(samples, both, ActDtype.UINT8).argmin())]
    top = [ActRange(best.lo, best.hi * float(r), 0.0) for r in torch.linspace(0.5, 1.5, 41)]
    top = [r for r in top if r.hi <= hi] or [best]
    best = top[int(_quant_error(samples, top, ActDtype.UINT8).argmin())]
    return best.lo, best.hi


def _requantized(hist: np.ndarray, levels: int) -> np.ndarray:
    """``hist`` merged into ``levels`` chunks (``np.array_split`` sizes), each chunk's mass spread
    evenly over its non-empty bins."""
    base, extra = divmod(len(hist), levels)
    sizes = np.full(levels, base)
    sizes[:extra] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonzero = hist > 0
    sums = np.add.reduceat(hist, starts)
    counts = np.add.reduceat(nonzero.astype(np.int64), starts)
    return np.repeat(sums / np.maximum(counts, 1), sizes) * nonzero


def _kl_best_edge(hist: np.ndarray, levels: int) -> int:
    """TensorRT's entropy calibration: the bin count whose ``levels``-level version diverges least."""
    best_i, best_kl = len(hist), float("inf")
    for i in range(levels, len(hist) + 1, 16):
        p = hist[:i].astype(np.float64).copy()
        p[-1] += hist[i:].sum()
        q = _requantized(hist[:i].astype(np.float64), levels)
        mask = p > 0
        if not mask.any():
            continue
        p_n, q_n = p / p.sum(), q / max(q.sum(), 1e-30)
        kl = float(np.sum(p_n[mask] * np.log(p_n[mask] / np.maximum(q_n[mask], 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def _entropy_amax(samples: torch.Tensor, amax: float) -> float:
    if amax <= 0:
        return amax
    hist = torch.histc(samples.abs(), bins=_HIST_BINS, min=0.0, max=amax).cpu().numpy()
    return amax * _kl_best_edge(hist, 128) / _HIST_BINS


def _entropy_hi(samples: torch.Tensor, lo: float, hi: float) -> float:
    if hi <= lo:
        return hi
    hist = torch.histc(samples, bins=_HIST_BINS, min=lo, max=hi).cpu().numpy()
    return lo + (hi - lo) * _kl_best_edge(hist, 256) / _HIST_BINS


def calibrate_ranges(
    module: nn.Module,
    layer_names: Sequence[str],
    run_batches: Iterator[None] | None = None,
    *,
    calib: CalibConfig,
) -> dict[str, ActRange]:
    """Input range of each named layer over the batches that ``run_batches`` drives through the model."""
    collectors = {name: CALIBRATORS[calib.method](calib) for name in layer_names}

    def make_hook(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            collectors[name].add(inputs[0])

        return hook

    handles = [module.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in layer_names]
    try:
        for _ in run_batches or ():
            pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: c.result() for name, c in collectors.items() if c.lo <= c.hi}


def ranges_record(ranges: Mapping[str, ActRange], calib: CalibConfig) -> dict[str, Any]:
    """The ``act_ranges`` JSON payload: ``ranges`` (min, max, amax) and, for older readers, ``amax``."""
    return {
        "method": calib.method.value,
        "format": RECORD_FORMAT,
        "ranges": {name: rng.to_dict() for name, rng in ranges.items()},
        "amax": {name: rng.amax for name, rng in ranges.items()},
    }


def read_ranges(payload: Mapping[str, Any]) -> dict[str, ActRange]:
    """Ranges from an ``act_ranges`` payload, new (``ranges``) or older (``amax`` only)."""
    if "ranges" in payload:
        return {name: ActRange.from_dict(value) for name, value in payload["ranges"].items()}
    return {name: ActRange.symmetric(value) for name, value in payload["amax"].items()}


ACT_RANGES_FILE = "act_ranges.json"  # a run directory's calibrated input ranges (sweep, candidates)
ACT_RANGES_KIND = "act_ranges"


def write_act_ranges(run_dir: Path, ranges: Mapping[str, ActRange], calib: CalibConfig) -> None:
    """Record the calibrated input ranges of a run directory."""
    write_json(Path(run_dir) / ACT_RANGES_FILE, ACT_RANGES_KIND, ranges_record(ranges, calib))


def read_act_ranges(run_dir: Path) -> tuple[CalibMethod, dict[str, ActRange]] | None:
    """The calibration method and ranges a run directory recorded, or None when it recorded none."""
    path = Path(run_dir) / ACT_RANGES_FILE
    if not path.is_file():
        return None
    payload = read_json(path, ACT_RANGES_KIND)
    return CalibMethod(payload["method"]), read_ranges(payload)
