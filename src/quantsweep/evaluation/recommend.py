"""Pick each target's recommendation from its measured models: what the target is for, within accuracy.

An artifact whose own runtime departed from the Torch simulation at materialize (its runtime check)
is passed over, and the recommendation says which and why.

Speed targets: the fastest model (its median latency relative to FP32's, measured in one
interleaved pass) whose mAP50-95 meets the accuracy target; kept float layers cost time through
their kernels and the Q/DQ around them, so the count of kept layers is not the objective. Models
within ``timing.SAME_TIME_SHARE`` of the fastest (by median and lower quartile) are not told apart
by the pass: of those, the most accurate is recommended (the search's free island: the same speed,
a higher score). A more accurate model the pass timed a few percent slower, within its noise, is
timed again alone against the fastest (``undecided_pair``; the evaluate stage runs that pass), and
that pass decides. Size
target: the smallest file that meets it. Where the fastest passing model is still slower than FP32,
the recommendation is FP32 itself (and says so) instead of shipping a slower model; where no
quantized model passes, there is no recommendation and the closest model is named.
"""

from __future__ import annotations

from typing import Any

from quantsweep.evaluation.accuracy_target import AccuracyTarget
from quantsweep.schemes.scheme_records import FP32_NAME, Policy
from quantsweep.targets import Backend, Objective
from quantsweep.targets.timing import SAME_TIME_SHARE

# a more accurate model that one shared pass timed within this share of the fastest, but not within
# SAME_TIME_SHARE, is timed again against it alone: the same pair's medians moved by up to 6%
# between shared passes on the 2-core machines, while ten 15-round passes of two such pairs alone
# (YOLOv10s in OpenVINO, YOLOv10m in ONNX Runtime) gave lower-quartile ratios of 0.964-1.019
NEAR_TIME_SHARE = 0.08
# a pair's own pass that times the challenger within this share of the anchor, but not within
# SAME_TIME_SHARE, leaves it open: ten 15-round passes of the YOLOv10s pair gave 0.976-1.025, so a
# tie lands there now and then; one more pass is pooled with it (evaluate_stage.settle_tie)
UNCLEAR_TIE_SHARE = 0.05
# FP32 against the fastest quantized model, less accurate: FP32 stays unless the pair's own pass
# times it more than this share slower. On an AMX Xeon, OpenVINO's INT8 YOLOv10m and its bf16 FP32
# timed 0.995-1.021x of each other in four such passes (twenty-fifth to twenty-seventh sessions),
# and the 2% bound of two quantized models shipped INT8 in one run and FP32 in the next; a
# deployment switched from FP32 to INT8 gives up accuracy for a gain beyond that noise, or not at all
FP32_SAME_TIME_SHARE = 0.05


def _speed_ratio(record: dict[str, Any]) -> float:
    latency = record.get("latency")
    return float("inf") if latency is None else latency["ratio_to_reference"]


def _objective_key(backend: Backend):
    if backend.objective is Objective.SPEED:
        return lambda r: (_speed_ratio(r), r["size_bytes"])
    return lambda r: (r["size_bytes"], r.get("kept") or 0)


def _score(record: dict[str, Any]) -> float:
    return record["score"]


def _cocoeval(record: dict[str, Any]) -> float | None:
    return (record.get("accuracy") or {}).get("cocoeval_map50_95_gt")


def _runtime_check(best: dict[str, Any], results: dict[str, dict[str, Any]]) -> str | None:
    """The recommended model's runtime check; a search finalist (scored on the runtime, never checked
    against Torch) says so and names the k0 artifact's check of the same placement."""
    if best.get("runtime_summary") or best["policy"] != Policy.SEARCH:
        return best.get("runtime_summary")
    k0 = (results.get("k0") or {}).get("runtime_summary")
    return f"not run for this search finalist; k0 of the same placement: {k0}" if k0 else None


def _baseline(record: dict[str, Any], *, target: AccuracyTarget, reference: float) -> dict[str, Any]:
    """A third-party export's figures, measured in the same passes as the candidates."""
    ratio = _speed_ratio(record)
    return {
        "name": record["name"],
        "map50_95": record["score"],
        "meets_target": target.met(record["score"], reference),
        "ratio_to_fp32": None if ratio == float("inf") else ratio,
        # rounds of the timing pass it ran in: fewer where it was far slower than a contender
        "timed_rounds": (record.get("latency") or {}).get("rounds"),
        "size_bytes": record["size_bytes"],
    }


def _anchor(backend: Backend, passing: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The model a speed tie is anchored on, and the models the pass timed within ``SAME_TIME_SHARE``
    of the fastest median."""
    best = min(passing, key=_objective_key(backend))
    by_median = [r for r in passing if _speed_ratio(r) <= _speed_ratio(best) * (1.0 + SAME_TIME_SHARE)]
    # the quickest of those by the lower quartile anchors the tie as well: a model whose median
    # is lower by a hair but whose lower quartile is a few percent higher is not the faster one
    return min(by_median, key=lambda r: _lower_quartile(r) or float("inf")), by_median


def _tie_check(record: dict[str, Any], anchor: dict[str, Any]) -> float | None:
    """``record``'s lower-quartile ratio to ``anchor`` from a pass of the two alone, if one ran."""
    check = (record.get("latency") or {}).get("tie_check")
    return check["lower_quartile_ratio"] if check and check["against"] == anchor["name"] else None


def _same_time_share(challenger: str) -> float:
    return FP32_SAME_TIME_SHARE if challenger == FP32_NAME else SAME_TIME_SHARE


def _pair_same_time(ratio: float, *, challenger: str) -> bool:
    """Whether a pair's own pass timed ``challenger`` at the anchor's time (``ratio`` x it)."""
    return ratio <= 1.0 + _same_time_share(challenger)


def _timed_alike(record: dict[str, Any], anchor: dict[str, Any], by_median: list[dict[str, Any]]) -> bool:
    checked = _tie_check(record, anchor)
    if checked is not None:  # the pair's own pass decides
        return _pair_same_time(checked, challenger=record["name"])
    return record in by_median and _same_time(record, anchor)


def _tied(backend: Backend, passing: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The model the tie is anchored on, and the passing models timed the same as it: by a pair's
    own pass where one ran, otherwise by the shared pass's median and lower quartile."""
    anchor, by_median = _anchor(backend, passing)
    return anchor, [r for r in passing if _timed_alike(r, anchor, by_median)]


def _choose(backend: Backend, passing: list[dict[str, Any]], fp32: dict[str, Any]) -> dict[str, Any] | None:
    """The passing model the target is for: the fastest (of those timed within ``SAME_TIME_SHARE``
    of it, the most accurate; FP32 itself where even the fastest is slower) or the smallest."""
    best = min(passing, key=_objective_key(backend), default=None)
    if backend.objective is not Objective.SPEED or best is None:
        return best
    if _speed_ratio(best) == float("inf"):
        return fp32
    anchor, tied = _tied(backend, passing)
    best = max(tied, key=_score)
    checked = _tie_check(fp32, anchor)  # FP32 timed again against the fastest, where it was close
    if _speed_ratio(best) >= 1.0 or (checked is not None and _pair_same_time(checked, challenger=FP32_NAME)):
        return fp32
    return best


def undecided_pair(
    backend: Backend, store, *, reference: float, target: AccuracyTarget
) -> tuple[str, str] | None:
    """(fastest, challenger) where a speed target's timing pass left them undecided: the challenger
    is the most accurate passing model, more accurate than the choice, that the pass timed within
    ``NEAR_TIME_SHARE`` of the fastest but not the same, and that no pair's pass has compared
    with it yet; failing that, FP32 itself, where the choice is faster than FP32 by less than
    ``NEAR_TIME_SHARE`` and less accurate (on an AMX Xeon OpenVINO's INT8 YOLOv10m timed 0.94x
    FP32 in one run's pass and 1.05x in the next). None where there is nothing to settle."""
    if backend.objective is not Objective.SPEED:
        return None
    records = store.all()
    passing = _shippable(records, target=target, reference=reference)
    if not passing or _speed_ratio(min(passing, key=_speed_ratio)) == float("inf"):
        return None
    anchor, tied = _tied(backend, passing)
    chosen = max(tied, key=_score)
    bound = _speed_ratio(anchor) * (1.0 + NEAR_TIME_SHARE)
    challengers = [
        r
        for r in passing
        if _score(r) > _score(chosen) and _tie_check(r, anchor) is None and _speed_ratio(r) <= bound
    ]
    if challengers:
        return anchor["name"], max(challengers, key=_score)["name"]
    fp32 = records.get(FP32_NAME)
    if (
        fp32 is not None
        and _score(fp32) > _score(chosen)
        and _speed_ratio(chosen) < 1.0 <= bound
        and _tie_check(fp32, anchor) is None
    ):
        return anchor["name"], FP32_NAME
    return None


def tie_unclear(ratio: float, *, challenger: str) -> bool:
    """Whether a pair's pass that timed ``challenger`` at ``ratio`` x the anchor leaves the tie open:
    just outside the pair's same-time share, by at most ``UNCLEAR_TIE_SHARE - SAME_TIME_SHARE``
    (2-5% for two quantized models, 5-8% for FP32)."""
    bound = 1.0 + _same_time_share(challenger) + (UNCLEAR_TIE_SHARE - SAME_TIME_SHARE)
    return not _pair_same_time(ratio, challenger=challenger) and ratio <= bound


def _quantized(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The quantized models (third-party baselines are compared with, not shipped)."""
    return [r for r in results.values() if r["name"] != FP32_NAME and r["policy"] != Policy.BASELINE]


def _shippable(results: dict[str, dict[str, Any]], *, target: AccuracyTarget, reference: float) -> list[dict]:
    """Quantized models that meet the target and that their runtime executes as simulated."""
    return [
        r
        for r in _quantized(results)
        if target.met(r["score"], reference) and r.get("runtime_agrees") is not False
    ]


def _lower_quartile(record: dict[str, Any]) -> float | None:
    return (record.get("latency") or {}).get("p25_ms")


def _same_time(record: dict[str, Any], fastest: dict[str, Any]) -> bool:
    """``record`` timed within ``SAME_TIME_SHARE`` of ``fastest`` by the median and, where the pass
    recorded it, by the lower quartile too: over passes of one pair on ONNX Runtime the ratio of
    medians moved 0.98-1.04, that of lower quartiles 1.026-1.028 (timing.lower_quartile_ratios), so
    a model a few percent slower is not taken for an equal one for its accuracy."""
    bound = 1.0 + SAME_TIME_SHARE
    if _speed_ratio(record) > _speed_ratio(fastest) * bound:
        return False
    mine, theirs = _lower_quartile(record), _lower_quartile(fastest)
    return mine is None or theirs is None or mine <= theirs * bound


def _recommended(best: dict[str, Any], *, backend: Backend, fp32: dict[str, Any], results, store) -> dict:
    """The recommendation's own fields."""
    ratio = _speed_ratio(best)
    return {
        "recommended": best["name"],
        "file": best["file"],
        "policy": best["policy"],
        "map50_95": best["score"],
        "cocoeval_map50_95": _cocoeval(best),
        "drop": best["drop"],
        "relative_drop": best["relative_drop"],
        "kept": best.get("kept"),
        "kept_layers": best.get("kept_layers"),
        "latency_ms": (best.get("latency") or {}).get("median_ms"),
        "speedup": None if ratio in (0, float("inf")) else 1.0 / ratio,
        "size_bytes": best["size_bytes"],
        "size_reduction": fp32["size_bytes"] / best["size_bytes"],
        "deploy": backend.deploy_hint(store.artifact_path(best)),
        "runtime_check": _runtime_check(best, results),
        "float_precision": (best.get("latency") or {}).get("float_precision"),
        "fp32_float_precision": (fp32.get("latency") or {}).get("float_precision"),
        "weight_codes": backend.weight_codes_note(store.artifact_path(best)),
    }


def recommend(
    backend: Backend, store, *, reference: float, metric: str, target: AccuracyTarget
) -> dict[str, Any]:
    """Choose, record (``recommendation.json``) and return the target's recommendation.

    ``reference`` is the FP32 model's ``metric``; every record's ``score`` is its ``metric``.
    """
    results = store.all()
    fp32 = results[FP32_NAME]
    quantized = _quantized(results)
    passing = [r for r in quantized if target.met(r["score"], reference)]
    # an artifact its own runtime executes differently from what was simulated is not shipped
    departs = [r for r in passing if r.get("runtime_agrees") is False]
    best = _choose(backend, _shippable(results, target=target, reference=reference), fp32)
    closest = max(quantized, key=_score, default=None)
    payload: dict[str, Any] = {
        "target": backend.name,
        "runtime": backend.runtime,
        "objective": backend.objective.value,
        "description": backend.description,
        "accuracy_target": target.to_dict(),
        "metric": metric,
        "reference_map50_95": reference,
        "threshold": target.threshold(reference),
        "fp32_latency_ms": (fp32.get("latency") or {}).get("median_ms"),
        "timing_rounds": (fp32.get("latency") or {}).get("rounds"),  # the reference runs in every round
        "fp32_size_bytes": fp32["size_bytes"],
        "reference_cocoeval_map50_95": _cocoeval(fp32),
        "closest": None if closest is None else closest["name"],
        "passed_over": [
            {
                "name": r["name"],
                "reason": f"{backend.runtime} departs from the Torch simulation: {r.get('runtime_summary')}",
            }
            for r in departs
        ],
        "baselines": [
            _baseline(r, target=target, reference=reference)
            for r in results.values()
            if r["policy"] == Policy.BASELINE
        ],
        "tie_checks": [
            {
                "model": r["name"],
                **check,
                "same_time": _pair_same_time(check["lower_quartile_ratio"], challenger=r["name"]),
            }
            for r in results.values()
            if (check := (r.get("latency") or {}).get("tie_check"))
        ],
        "recommended": None,
    }
    if best is not None:
        payload.update(_recommended(best, backend=backend, fp32=fp32, results=results, store=store))
    store.write_recommendation(payload)
    return payload
