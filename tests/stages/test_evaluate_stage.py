"""The evaluate stage scores a top-K artifact only where it can still be the recommendation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from quantsweep.evaluation.accuracy_target import AccuracyTarget
from quantsweep.evaluation.recommend import recommend, tie_unclear
from quantsweep.evaluation.scoring import Accuracy
from quantsweep.onnx_graph.candidates import Artifact
from quantsweep.report.table import load_target
from quantsweep.stages import evaluate_stage
from quantsweep.stages.eval_records import ResultStore
from quantsweep.stages.evaluate_stage import TIE_PASSES, TIE_ROUNDS, _accuracy_pass, _meets, settle_tie
from quantsweep.targets import get_backend
from quantsweep.targets.timing import Timing

REFERENCE = 0.900  # FP32 mAP50-95; the default target (1% relative) asks 0.891


@dataclass
class _Context:
    """What _accuracy_pass reads of an EvalContext; scores come from a table, calls are recorded."""

    scores: dict[str, float]
    metric: str = "map50_95_gt"
    float_scores: dict = field(default_factory=dict)
    scored: list[str] = field(default_factory=list)

    def score(self, backend, path: Path) -> Accuracy:
        self.scored.append(path.stem)
        value = self.scores[path.stem]
        return Accuracy(value, value, value, value)


def _artifact(name: str, policy: str, kept: int | None) -> Artifact:
    layers = None if kept is None else tuple(f"model.{i}" for i in range(kept))
    return Artifact(name, f"{name}.onnx", policy, layers, 1000, 8.0, True, 0.0)


def _pass(
    tmp_path: Path,
    scores: dict[str, float],
    artifacts: list[Artifact],
    *,
    target: str = "ort-cpu",
    write=None,
) -> tuple[_Context, ResultStore]:
    context = _Context(scores)
    store = ResultStore(
        tmp_path / "results" / target,
        target=target,
        candidates_dir=tmp_path,
        metric=context.metric,
        reference=REFERENCE,
    )
    meets = lambda score: _meets(score, target=AccuracyTarget(), reference=REFERENCE)  # noqa: E731
    _accuracy_pass(
        get_backend(target),
        artifacts,
        context,
        store,
        step=lambda _: None,
        executor=None,
        meets=meets,
        write=write,
    )
    return context, store


ARTIFACTS = [
    _artifact("fp32", "fp32", None),
    _artifact("k10", "top_k", 10),  # listed out of order on purpose: scored by kept count
    _artifact("k0", "top_k", 0),
    _artifact("k5", "top_k", 5),
    _artifact("ultralytics_int8", "baseline", None),
]


@pytest.mark.parametrize(
    ("k0", "k5", "scored", "skipped"),
    [
        (0.895, 0.899, ["fp32", "k0", "ultralytics_int8"], {"k5": "`k0`", "k10": "`k0`"}),
        (0.850, 0.895, ["fp32", "k0", "k5", "ultralytics_int8"], {"k10": "`k5`"}),
        (0.850, 0.860, ["fp32", "k0", "k5", "k10", "ultralytics_int8"], {}),
    ],
)
def test_top_k_artifacts_a_passing_one_dominates_are_not_scored(tmp_path, k0, k5, scored, skipped) -> None:
    scores = {"fp32": REFERENCE, "k0": k0, "k5": k5, "k10": 0.899, "ultralytics_int8": 0.80}
    context, store = _pass(tmp_path, scores, ARTIFACTS)
    assert context.scored == scored  # FP32 first, top-K by kept count, then the rest
    assert set(store.all()) == set(scored)
    found = store.skipped()
    assert set(found) == set(skipped)
    for name, by in skipped.items():
        assert found[name].startswith(by) and "fewer float layers" in found[name]
    # the report says which models were not scored and why
    assert (load_target(tmp_path, "ort-cpu").skipped or {}) == found


def test_a_deferred_top_k_artifact_is_written_only_where_it_must_be_scored(tmp_path) -> None:
    artifacts = [
        dataclasses.replace(a, deferred=True, size_bytes=None) if a.name in ("k5", "k10") else a
        for a in ARTIFACTS
    ]
    written: list[str] = []

    def write(artifact: Artifact) -> dict:
        written.append(artifact.name)
        path = tmp_path / "deferred" / f"{artifact.name}.onnx"
        return {**artifact.to_dict(), "kept": artifact.kept, "file": str(path), "deferred": False}

    scores = {"fp32": REFERENCE, "k0": 0.850, "k5": 0.895, "k10": 0.899, "ultralytics_int8": 0.80}
    context, store = _pass(tmp_path, scores, artifacts, write=write)
    assert written == ["k5"] and "k5" in context.scored  # k0 misses: k5 is needed, k10 is not
    assert store.all()["k5"]["file"] == str(tmp_path / "deferred" / "k5.onnx")
    assert store.skipped()["k10"].endswith("so it was not written either")


def test_a_top_k_artifact_a_reference_scheme_is_compared_with_is_always_scored(tmp_path) -> None:
    artifacts = [*ARTIFACTS, _artifact("random_k5", "random", 5)]
    scores = {"fp32": REFERENCE, "k0": 0.899, "k5": 0.899, "k10": 0.899, "random_k5": 0.5}
    scores["ultralytics_int8"] = 0.8
    context, store = _pass(tmp_path, scores, artifacts)
    assert "k5" in context.scored and "random_k5" in context.scored and "k10" not in context.scored
    assert set(store.skipped()) == {"k10"}


def test_a_resumed_pass_keeps_its_scores_and_skips_the_same(tmp_path) -> None:
    scores = {"fp32": REFERENCE, "k0": 0.899, "k5": 0.899, "k10": 0.899, "ultralytics_int8": 0.8}
    _pass(tmp_path, scores, ARTIFACTS)
    again, store = _pass(tmp_path, scores, ARTIFACTS)
    assert again.scored == []  # everything scored before is read back, k0 passing still spares k5, k10
    assert set(store.skipped()) == {"k5", "k10"}


def _sized(name: str, policy: str, kept: int | None, size: int) -> Artifact:
    layers = None if kept is None else tuple(f"model.{i}" for i in range(kept))
    return Artifact(name, f"{name}.onnx", policy, layers, size, 4.0, True, 0.0)


def test_on_a_size_target_a_file_no_smaller_than_a_passing_one_is_not_scored(tmp_path) -> None:
    artifacts = [
        _sized("fp32", "fp32", None, 4_000_000),
        _sized("k0", "top_k", 0, 1_000_000),
        _sized("k5", "top_k", 5, 1_100_000),
        _sized("budget_4.5bits", "budget", 30, 1_200_000),  # larger than k5, which meets the target
        _sized("random_k5", "random", 5, 1_150_000),  # a reference scheme: always scored
    ]
    scores = {"fp32": REFERENCE, "k0": 0.85, "k5": 0.895, "budget_4.5bits": 0.899, "random_k5": 0.8}
    context, store = _pass(tmp_path, scores, artifacts, target="size")
    assert context.scored == ["fp32", "k0", "k5", "random_k5"]
    assert store.skipped() == {
        "budget_4.5bits": "`k5` meets the accuracy target in a file no larger (1.1 MB)"
    }


def test_a_pair_left_undecided_is_timed_again_alone_on_its_runtime(undecided_pair) -> None:
    """Two copies of one model that a shared pass put 4% apart are timed again alone on the target's
    runtime (ONNX Runtime), the ratio is recorded, and the recommendation follows it."""
    pair = undecided_pair
    assert recommend(pair.backend, pair.store, **pair.choose)["recommended"] == "k0"
    settle_tie(pair.backend, pair.store, pair.context, pair.request)
    check = pair.store.all()["search_k1"]["latency"]["tie_check"]
    assert check["against"] == "k0" and "worker" not in check  # timed in this process
    # a second pass, pooled, only where the first put it just outside the tie
    assert check["rounds"] in (TIE_ROUNDS, TIE_PASSES * TIE_ROUNDS)
    if check["rounds"] == TIE_ROUNDS:
        assert not tie_unclear(check["lower_quartile_ratio"], challenger="search_k1")
    # one file twice, measured: a tiny model's 1-2 ms runs put it 0.92-1.08 apart, not exactly 1
    assert 0.5 < check["lower_quartile_ratio"] < 2.0
    # the recommendation follows the pair's own pass (its rule both ways: test_target_and_recommend)
    same = check["lower_quartile_ratio"] <= 1.02
    chosen = recommend(pair.backend, pair.store, **pair.choose)["recommended"]
    assert chosen == ("search_k1" if same else "k0")


def test_a_pairs_pass_just_outside_the_tie_is_pooled_with_a_second(undecided_pair, monkeypatch) -> None:
    """The stage asks for a second pass exactly where the first leaves the tie open, and records the
    rounds the pooled ratio is over."""
    asked = {}

    def passes(runners, image, *, reference, again, rounds, passes):
        asked.update(reference=reference, rounds=rounds, passes=passes, models=sorted(runners))
        asked["open"] = [again({"k0": 1.0, "search_k1": r}) for r in (1.01, 1.03, 1.08)]
        return {"k0": 1.0, "search_k1": 1.012}, 2 * rounds

    monkeypatch.setattr(evaluate_stage, "pooled_lower_quartile_ratios", passes)
    pair = undecided_pair
    settle_tie(pair.backend, pair.store, pair.context, pair.request)
    assert asked == {
        "reference": "k0",
        "rounds": TIE_ROUNDS,
        "passes": TIE_PASSES,
        "models": ["k0", "search_k1"],
        "open": [False, True, False],
    }
    check = pair.store.all()["search_k1"]["latency"]["tie_check"]
    assert check["rounds"] == 2 * TIE_ROUNDS and check["lower_quartile_ratio"] == 1.012
    assert recommend(pair.backend, pair.store, **pair.choose)["recommended"] == "search_k1"


def test_fp32_is_timed_alone_against_the_fastest_after_the_pair(undecided_pair, monkeypatch) -> None:
    """Where the quantized models run only a few percent faster than FP32 (OpenVINO on an AMX Xeon),
    the stage times the undecided pair first, then FP32 against the fastest, and FP32 timed the
    same is recommended (it is the more accurate)."""
    pair = undecided_pair
    for name, ratio in (("k0", 0.95), ("search_k1", 0.99)):
        timing = {"median_ms": 10 * ratio, "p10_ms": 0, "p90_ms": 0, "ratio_to_reference": ratio}
        pair.store.write_timing(name, Timing(**timing, ratio_spread=0, runs=35, rounds=7, device="cpu"))
    asked = []

    def passes(runners, image, *, reference, again, rounds, passes):
        asked.append(sorted(runners))
        other = next(name for name in runners if name != reference)
        return {reference: 1.0, other: {"search_k1": 1.03, "fp32": 1.01}[other]}, rounds

    monkeypatch.setattr(evaluate_stage, "pooled_lower_quartile_ratios", passes)
    assert recommend(pair.backend, pair.store, **pair.choose)["recommended"] == "k0"
    settle_tie(pair.backend, pair.store, pair.context, pair.request)
    assert asked == [["k0", "search_k1"], ["fp32", "k0"]]
    assert recommend(pair.backend, pair.store, **pair.choose)["recommended"] == "fp32"
