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
from functools import partial

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
# a model at least this many times slower than the fastest contender (a model that may be
# recommended) after DROP_AFTER_ROUNDS rounds can be neither the fastest nor tied with it: it is
# timed no further (a visit of the default run's Ultralytics ONNX Runtime export took 0.9 s of
# its 7-round pass, at 5x the recommendation's time). Timing noise between visits is 10-20% here.
DROP_SHARE = 1.5
DROP_AFTER_ROUNDS = 3


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


def _dominated(per_round: Mapping[str, list[list[float]]], *, keep: str, contenders: set[str]) -> set[str]:
    """Models (never ``keep``) whose median so far is ``DROP_SHARE`` times a contender's or more."""
    medians = {
        name: statistics.median(t for times in visits for t in times) for name, visits in per_round.items()
    }
    fastest = min((medians[n] for n in contenders if n in medians), default=None)
    if fastest is None:
        return set()
    return {n for n, m in medians.items() if n != keep and m >= DROP_SHARE * fastest}


def _interleaved_times(
    runners: Mapping[str, Runner],
    image: np.ndarray,
    *,
    rounds: int,
    runs_per_round: int,
    warmup: int,
    settle_s: float = SETTLE_S,
    progress: ProgressFn | None = None,
    drop: Callable[[Mapping[str, list[list[float]]]], set[str]] | None = None,
) -> dict[str, list[list[float]]]:
    """Per model, per round, the milliseconds of its runs; rounds visit every model in rotated order,
    each visit after an idle pause of ``settle_s`` (``SETTLE_S``: the previous model's threads stop).
    ``drop(times so far)``, asked after each of rounds ``DROP_AFTER_ROUNDS`` onward, names models
    to time no further."""
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
        if drop is not None and r + 1 >= DROP_AFTER_ROUNDS:
            names = [n for n in names if n not in drop(per_round)]
    return per_round


def _runs_of(per_round: Mapping[str, list[list[float]]]) -> dict[str, list[float]]:
    """Every run of each model over a pass, its rounds' visits taken together."""
    return {name: [t for times in visits for t in times] for name, visits in per_round.items()}


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
    one_pass = {"rounds": rounds, "runs_per_round": runs_per_round, "warmup": warmup, "settle_s": settle_s}
    ratios, _ = pooled_lower_quartile_ratios(
        runners, image, reference=reference, again=lambda _: False, passes=1, **one_pass
    )
    return ratios


def pooled_lower_quartile_ratios(
    runners: Mapping[str, Runner],
    image: np.ndarray,
    *,
    reference: str,
    again: Callable[[dict[str, float]], bool],
    rounds: int = 15,
    passes: int = 2,
    runs_per_round: int = 5,
    warmup: int = 3,
    settle_s: float = SETTLE_S,
) -> tuple[dict[str, float], int]:
    """``lower_quartile_ratios`` over up to ``passes`` passes of ``rounds`` rounds: while
    ``again(ratios so far)`` says they leave the question open, one more pass runs and its runs are
    pooled with the earlier ones (a pass's ratio near a decision bound is as likely noise as not).
    Returns the ratios and the rounds they are over."""
    pooled: dict[str, list[float]] = {name: [] for name in runners}
    timed = 0
    while timed < passes * rounds:
        per_round = _interleaved_times(
            runners, image, rounds=rounds, runs_per_round=runs_per_round, warmup=warmup, settle_s=settle_s
        )
        for name, runs in _runs_of(per_round).items():
            pooled[name].extend(runs)
        timed += rounds
        quartile = {name: float(np.percentile(runs, 25)) for name, runs in pooled.items()}
        ratios = {name: value / quartile[reference] for name, value in quartile.items()}
        if not again(ratios):
            break
    return ratios, timed


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
    contenders: set[str] | None = None,
) -> dict[str, Timing]:
    """Time every runner on ``image`` in ``rounds`` rotated rounds; ratios are against ``reference``.

    With ``contenders`` (the models that may be recommended), a model found ``DROP_SHARE`` times
    slower than the fastest of them after ``DROP_AFTER_ROUNDS`` rounds is timed no further; its
    figures are over the rounds it was timed in (``Timing.rounds``), its ratio against the
    reference's runs in those same rounds. The reference is timed in every round.
    """
    if reference not in runners:
        raise ValueError(f"the reference {reference} is not among the timed models")
    drop = None if contenders is None else partial(_dominated, keep=reference, contenders=contenders)
    per_round = _interleaved_times(
        runners,
        image,
        rounds=rounds,
        runs_per_round=runs_per_round,
        warmup=warmup,
        settle_s=settle_s,
        progress=progress,
        drop=drop,
    )
    ref_medians = [statistics.median(times) for times in per_round[reference]]
    result = {}
    for name in runners:
        timed = len(per_round[name])  # the first rounds: a model is dropped, never skipped
        flat = [t for times in per_round[name] for t in times]
        ref_flat = [t for times in per_round[reference][:timed] for t in times]
        ratios = [
            statistics.median(t) / ref for t, ref in zip(per_round[name], ref_medians[:timed], strict=True)
        ]
        result[name] = Timing(
            median_ms=statistics.median(flat),
            p10_ms=float(np.percentile(flat, 10)),
            p90_ms=float(np.percentile(flat, 90)),
            p25_ms=float(np.percentile(flat, 25)),
            ratio_to_reference=statistics.median(flat) / statistics.median(ref_flat),
            ratio_spread=max(ratios) - min(ratios),
            runs=len(flat),
            rounds=timed,
            device=runners[name].device,
            float_precision=runners[name].float_precision(),
        )
    return result
