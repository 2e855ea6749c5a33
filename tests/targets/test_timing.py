"""The interleaved timing pass: ratios against the reference measured round by round."""

from __future__ import annotations

import time

import numpy as np
import pytest

from quantsweep.targets.base import Runner
from quantsweep.targets.timing import (
    DROP_AFTER_ROUNDS,
    interleaved_latency,
    lower_quartile_ratios,
    pooled_lower_quartile_ratios,
)


class _Sleeper(Runner):
    def __init__(self, seconds: float, log: list[str], name: str) -> None:
        self.seconds, self.log, self.name = seconds, log, name

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.log.append(self.name)
        time.sleep(self.seconds)
        return image


def test_ratios_rounds_and_rotation() -> None:
    log: list[str] = []
    runners = {n: _Sleeper(s, log, n) for n, s in (("fp32", 0.02), ("half", 0.01), ("same", 0.02))}
    timings = interleaved_latency(
        runners, np.zeros(1), reference="fp32", rounds=3, runs_per_round=2, warmup=1
    )
    # sleeps of 10-20 ms: scheduler noise on a loaded 2-core machine stays well inside the bounds
    assert timings["fp32"].ratio_to_reference == 1.0
    assert 0.3 < timings["half"].ratio_to_reference < 0.75
    assert 0.75 < timings["same"].ratio_to_reference < 1.35
    assert all(t.runs == 6 and t.rounds == 3 for t in timings.values())
    assert timings["half"].p10_ms <= timings["half"].median_ms <= timings["half"].p90_ms
    # after warm-up, each round starts with a different model
    timed = log[3:]
    assert [timed[i * 6] for i in range(3)] == ["fp32", "half", "same"]


def test_reference_must_be_timed() -> None:
    with pytest.raises(ValueError, match="reference"):
        interleaved_latency({"a": _Sleeper(0.0, [], "a")}, np.zeros(1), reference="fp32")


class _Bursty(_Sleeper):
    """Slowed 3x on three runs in five: load elsewhere lengthens runs, never shortens them."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        slowed = len(self.log) % 5 < 3
        self.log.append(self.name)
        time.sleep(self.seconds * (3 if slowed else 1))
        return image


def test_lower_quartile_ratios_see_the_models_cost_through_bursts_of_load() -> None:
    runners = {
        "k0": _Sleeper(0.01, [], "k0"),
        "bursty_same": _Bursty(0.01, [], "bursty_same"),
        "half": _Sleeper(0.005, [], "half"),
    }
    robust = lower_quartile_ratios(runners, np.zeros(1), reference="k0", rounds=4, runs_per_round=5, warmup=0)
    assert robust["k0"] == 1.0 and 0.8 < robust["bursty_same"] < 1.3 and 0.3 < robust["half"] < 0.75
    # a median takes bursts on most runs for the model's own cost
    medians = interleaved_latency(runners, np.zeros(1), reference="k0", rounds=4, runs_per_round=5, warmup=0)
    assert medians["bursty_same"].ratio_to_reference > 2.0


class _SlowedAfter(_Sleeper):
    """Three times slower after its first ``calls`` calls (a second pass beside load elsewhere)."""

    def __init__(self, seconds: float, name: str, calls: int) -> None:
        super().__init__(seconds, [], name)
        self.calls = calls

    def __call__(self, image: np.ndarray) -> np.ndarray:
        slowed = len(self.log) >= self.calls
        self.log.append(self.name)
        time.sleep(self.seconds * (3 if slowed else 1))
        return image


def test_a_pass_that_leaves_the_question_open_is_pooled_with_one_more() -> None:
    rounds, one_pass = 4, 3 + 4 * 5  # warm-up and 4 rounds of 5 runs
    runners = {"k0": _Sleeper(0.005, [], "k0"), "island": _SlowedAfter(0.005, "island", one_pass)}
    ratios, timed = pooled_lower_quartile_ratios(
        runners,
        np.zeros(1),
        reference="k0",
        again=lambda found: found["island"] < 1.5,  # open after the first pass and after the second
        rounds=rounds,
        passes=2,
        settle_s=0.0,
    )
    # no more than two passes; the second (3x slower throughout, on its own near 3) is pooled with
    # the first, so the lower quartile is the model's own cost
    assert timed == 2 * rounds and len(runners["island"].log) == 2 * one_pass
    assert 0.7 < ratios["island"] < 1.4
    # a pass that settles the question is not repeated
    runners["island"] = _SlowedAfter(0.005, "island", one_pass)
    ratios, timed = pooled_lower_quartile_ratios(
        runners, np.zeros(1), reference="k0", again=lambda found: False, rounds=rounds, settle_s=0.0
    )
    assert timed == rounds and len(runners["island"].log) == one_pass and 0.7 < ratios["island"] < 1.4


class _Spun(_Sleeper):
    """Three times slower while another model's threads still spin: a run that starts less than
    ``window`` seconds after a different runner's last run ended (ONNX Runtime on 2 cores)."""

    def __init__(self, seconds: float, ended: dict[str, float], name: str, window: float) -> None:
        super().__init__(seconds, [], name)
        self.ended, self.window = ended, window

    def __call__(self, image: np.ndarray) -> np.ndarray:
        others = [t for n, t in self.ended.items() if n != self.name]
        spun = bool(others) and time.perf_counter() - max(others) < self.window
        time.sleep(self.seconds * (3 if spun else 1))
        self.ended[self.name] = time.perf_counter()
        return image


def test_each_visit_waits_for_the_previous_models_threads_to_stop() -> None:
    ended: dict[str, float] = {}
    runners = {"fp32": _Spun(0.02, ended, "fp32", 0.05), "quarter": _Spun(0.005, ended, "quarter", 0.05)}
    settled = interleaved_latency(runners, np.zeros(1), reference="fp32", rounds=3, warmup=1)
    assert 0.15 < settled["quarter"].ratio_to_reference < 0.45
    # without the pause the cheap model spends most of each 5-run visit beside the spinning threads
    unsettled = interleaved_latency(runners, np.zeros(1), reference="fp32", rounds=3, warmup=1, settle_s=0.0)
    assert unsettled["quarter"].ratio_to_reference > 0.55


def test_a_model_far_slower_than_a_contender_is_timed_in_fewer_rounds() -> None:
    log: list[str] = []
    speeds = (("fp32", 0.02), ("k0", 0.005), ("near", 0.006), ("slow", 0.03))
    runners = {n: _Sleeper(s, log, n) for n, s in speeds}
    timings = interleaved_latency(
        runners, np.zeros(1), reference="fp32", rounds=6, runs_per_round=2, warmup=0, contenders={"k0"}
    )
    # 6x the contender after three rounds: timed no further; its ratio is against the reference's
    # runs in those same rounds
    assert timings["slow"].rounds == DROP_AFTER_ROUNDS and log.count("slow") == 2 * DROP_AFTER_ROUNDS
    assert timings["slow"].runs == 2 * DROP_AFTER_ROUNDS and 1.1 < timings["slow"].ratio_to_reference < 2.0
    # the reference is timed in every round however slow; a model near the contender too
    assert timings["fp32"].rounds == timings["near"].rounds == timings["k0"].rounds == 6
    # without contenders (nothing meets the accuracy target) every model runs every round
    everyone = interleaved_latency(
        runners, np.zeros(1), reference="fp32", rounds=4, runs_per_round=1, warmup=0
    )
    assert all(t.rounds == 4 for t in everyone.values())
