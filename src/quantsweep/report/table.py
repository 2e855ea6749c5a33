"""Rows of the per-target tables and the recommendation cards, read from an evaluate run's records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep.core.errors import InputError
from quantsweep.core.layout import results_dir, search_dir
from quantsweep.core.records import read_json
from quantsweep.schemes.scheme_records import FP32_NAME, Policy
from quantsweep.stages.eval_records import (
    CONFIG_KIND,
    RECOMMENDATION_KIND,
    RESULT_KIND,
    SKIPPED_KIND,
    UNAVAILABLE_KIND,
)

POLICY_ORDER = {
    Policy.FP32: 0,
    Policy.BASELINE: 1,
    Policy.SEARCH: 2,
    Policy.TOP_K: 3,
    Policy.BUDGET: 4,
    Policy.RANDOM: 5,
    Policy.FIRST_HEAD: 6,
}


@dataclass(frozen=True)
class Row:
    """One model of one target in the summary."""

    name: str
    kind: str  # the scheme's policy, as recorded (fp32, baseline, search, top_k, ...)
    kept: int | None
    map50_95: float | None
    map50: float | None
    drop: float | None
    relative_drop: float | None
    size_mb: float
    avg_bits: float | None
    latency_ms: float | None
    p10_ms: float | None
    p90_ms: float | None
    speed_ratio: float | None  # latency / FP32 latency, median over interleaved rounds
    recommended: bool = False


@dataclass(frozen=True)
class TargetReport:
    """Everything the report shows for one target."""

    target: str
    rows: list[Row]
    recommendation: dict[str, Any] | None
    unavailable: str | None
    search: dict[str, Any] | None
    skipped: dict[str, str] | None = None  # models not scored, with the reason
    labelled: bool = True  # the evaluation images had labels (the FP32 model has a labelled score)


def _row(record: dict[str, Any], recommended: str | None) -> Row:
    acc = record["accuracy"]
    lat = record.get("latency") or {}
    use_gt = record["metric"] == "map50_95_gt"
    return Row(
        name=record["name"],
        kind=record["policy"],
        kept=record.get("kept"),
        map50_95=record["score"],
        map50=acc["map50_gt"] if use_gt else acc["map50_vs_fp32"],
        drop=record.get("drop"),
        relative_drop=record.get("relative_drop"),
        size_mb=record["size_bytes"] / 1e6,
        avg_bits=record.get("avg_weight_bits"),
        latency_ms=lat.get("median_ms"),
        p10_ms=lat.get("p10_ms"),
        p90_ms=lat.get("p90_ms"),
        speed_ratio=lat.get("ratio_to_reference"),
        recommended=record["name"] == recommended,
    )


def load_target(eval_dir: Path, target: str) -> TargetReport:
    """One target's rows (FP32 first), recommendation, search record or unavailability."""
    directory = results_dir(eval_dir, target)
    if (directory / "unavailable.json").is_file():
        reason = read_json(directory / "unavailable.json", UNAVAILABLE_KIND)["reason"]
        return TargetReport(target, [], None, reason, None)
    rec_path = directory / "recommendation.json"
    recommendation = read_json(rec_path, RECOMMENDATION_KIND) if rec_path.is_file() else None
    chosen = None if recommendation is None else recommendation["recommended"]
    records = [read_json(p, RESULT_KIND) for p in sorted((directory / "models").glob("*.json"))]
    rows = [_row(record, chosen) for record in records]
    fp32 = next((r for r in records if r["name"] == FP32_NAME), None)
    labelled = fp32 is None or fp32["accuracy"]["map50_95_gt"] is not None
    search_path = search_dir(eval_dir, target) / "search.json"
    search = read_json(search_path, "scheme_search") if search_path.is_file() else None
    rows.sort(key=lambda r: (POLICY_ORDER.get(r.kind, 9), r.kept or 0, r.name))
    skipped_path = directory / "skipped.json"
    skipped = read_json(skipped_path, SKIPPED_KIND)["models"] if skipped_path.is_file() else None
    return TargetReport(target, rows, recommendation, None, search, skipped, labelled)


def load_targets(eval_dir: Path) -> list[TargetReport]:
    """Every target of the run, in the order it was asked for."""
    config_path = eval_dir / "eval_config.json"
    if not config_path.is_file():
        raise InputError(f"{eval_dir} is not an evaluate run directory (no eval_config.json)")
    config = read_json(config_path, CONFIG_KIND)
    return [load_target(eval_dir, target) for target in config["targets"]]


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[Row]) -> list[str]:
    """A target's table as Markdown lines."""
    lines = [
        "| model | policy | kept float | mAP50-95 | mAP50 | drop | size MB | avg weight bits "
        "| latency ms (p10-p90) | x FP32 time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"**`{r.name}`** (recommended)" if r.recommended else f"`{r.name}`"
        spread = "" if r.p10_ms is None else f" ({r.p10_ms:.1f}-{r.p90_ms:.1f})"
        lines.append(
            f"| {name} | {r.kind} | {'-' if r.kept is None else r.kept} | {_f(r.map50_95)} | "
            f"{_f(r.map50)} | {_f(r.drop)} | {r.size_mb:.1f} | {_f(r.avg_bits, 2)} | "
            f"{_f(r.latency_ms, 1)}{spread} | {_f(r.speed_ratio, 2)} |"
        )
    return lines
