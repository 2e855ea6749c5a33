"""Latency that can be trusted on a shared machine: every model timed in the same interleaved rounds.

Timing one model after another lets a burst of load elsewhere land on one of them. Here each
round visits every model (in a rotated order, so no model always runs first), so every model is
sampled across the same stretch of time, and a model's speed is its median latency over the pass
divided by the reference model's. (Until the fourteenth session it was the median over rounds of
per-round ratios of 5-run medians; on ONNX Runtime on a 2-core VM a burst inside one model's five
runs moved that statistic so much that two models with the same 21.7 ms median latency were stated
as 0.51x and 0.47x, and four 15-round passes of one pair gave 0.95-1.34, against 0.98-1.04 for the
ratio of medians and 1.026-1.028 for the ratio of lower quartiles: docs/figures.md.) Each visit
starts after an idle pause (``SETTLE_S``), so that no model is timed while the previous model's
runtime threads still spin; much of what looked like load on ONNX Runtime was that.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from quantsweep.targets.base import Runner

ProgressFn = Callable[[str], None]
# an idle pause before each visit: a runtime's worker threads go on spinning for a while after the
# model they served returns, and on a 2-core machine the next model's threads then share the cores
# with them. Measured (sixteenth session, ONNX Runtime, YOLOv10s at 320 px): with no pause the
# first 2-4 runs of a visit took up to 2x their steady time, so medians over 5-run visits stated
# `k0` at 0.61x FP32 where each model timed alone gives 0.45x; a pause of 50 ms removed it
# (benchmarks/timing_settle.py). OpenVINO showed no such effect.
SETTLE_S = 0.1
# ratios to the reference within this share of each other are not told apart: an interleaved
# pass's medians moved by 1-3% between passes on the 2-core machines (docs/figures.md)
SAME_TIME_SHARE = 0.02


@dataclass(frozen=True)
class Timing:
    """One model's batch-1 latency from an interleaved pass, and its speed relative to the reference."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    ratio_to_reference: float  # this model's median latency over the pass / the reference's
    ratio_spread: float  # max - min of the per-round ratios of 5-run medians: how noisy the pass was
    runs: int
    rounds: int
    device: str
    float_precision: str | None = None  # what the runtime ran non-quantized ops in (f32, bf16)
    # the lower quartile over the pass: bursts of load lengthen runs and never shorten them, so it
    # tells apart models a few percent apart where the median cannot (lower_quartile_ratios)
    p25_ms: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _round_times(runner: Runner, image: np.ndarray, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(image)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _interleaved_times(
    runners: Mapping[str, Runner],
    image: np.ndarray,
    *,
    rounds: int,
    runs_per_round: int,
    warmup: int,
    settle_s: float = SETTLE_S,
    progress: ProgressFn | None = None,
) -> dict[str, list[list[float]]]:
    """Per model, per round, the milliseconds of its runs; rounds visit every model in rotated order,
    each visit after an idle pause of ``settle_s`` (``SETTLE_S``: the previous model's threads stop)."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](image)
    per_round: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(settle_s)
            per_round[name].append(_round_times(runners[name], image, runs_per_round))
        if progress is not None:
            progress(f"round {r + 1}/{rounds}")
    return per_round


def lower_quartile_ratios(
    runners: Mapping[str, Runner],
    image: np.ndarray,
    *,
    reference: str,
    rounds: int = 15,
    runs_per_round: int = 5,
    warmup: int = 3,
    settle_s: float = SETTLE_S,
) -> dict[str, float]:
    """Each model's lower-quartile latency over one interleaved pass, divided by the reference's: a
    decision statistic for models that differ by a few percent. Bursts of load elsewhere lengthen
    some runs, never shorten them, so the lower quartile tracks what the model itself costs: on
    ONNX Runtime (YOLOv10s, one float conv against none, 2 cores) four 15-round passes gave
    1.026-1.028 this way, and 0.95-1.34 as the median of per-round ratios."""
    per_round = _interleaved_times(
        runners, image, rounds=rounds, runs_per_round=runs_per_round, warmup=warmup, settle_s=settle_s
    )
    quartile = {
        name: float(np.percentile([t for times in visits for t in times], 25))
        for name, visits in per_round.items()
    }
    return {name: value / quartile[reference] for name, value in quartile.items()}


def interleaved_latency(
    runners: Mapping[str, Runner],
    image: np.ndarray,
    *,
    reference: str,
    rounds: int = 7,
    runs_per_round: int = 5,
    warmup: int = 3,
    settle_s: float = SETTLE_S,
    progress: ProgressFn | None = None,
) -> dict[str, Timing]:
    """Time every runner on ``image`` in ``rounds`` rotated rounds; ratios are against ``reference``."""
    if reference not in runners:
        raise ValueError(f"the reference {reference} is not among the timed models")
    names = list(runners)
    per_round = _interleaved_times(
        runners,
        image,
        rounds=rounds,
        runs_per_round=runs_per_round,
        warmup=warmup,
        settle_s=settle_s,
        progress=progress,
    )
    ref_medians = [statistics.median(times) for times in per_round[reference]]
    ref_median = statistics.median(t for times in per_round[reference] for t in times)
    result = {}
    for name in names:
        flat = [t for times in per_round[name] for t in times]
        ratios = [statistics.median(t) / ref for t, ref in zip(per_round[name], ref_medians, strict=True)]
        result[name] = Timing(
            median_ms=statistics.median(flat),
            p10_ms=float(np.percentile(flat, 10)),
            p90_ms=float(np.percentile(flat, 90)),
            p25_ms=float(np.percentile(flat, 25)),
            ratio_to_reference=statistics.median(flat) / ref_median,
            ratio_spread=max(ratios) - min(ratios),
            runs=len(flat),
            rounds=rounds,
            device=runners[name].device,
            float_precision=runners[name].float_precision(),
        )
    return result
