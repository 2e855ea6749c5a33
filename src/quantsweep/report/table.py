"""Rows of the summary table and the recommendation, from an evaluate run's results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIND_ORDER = {
    "fp32": 0,
    "baseline": 1,
    "recommended": 2,
    "top_k": 3,
    "budget": 4,
    "random": 5,
    "first_head": 6,
}


@dataclass(frozen=True)
class Row:
    """One model in the summary."""

    name: str
    kind: str
    kept: int | None
    map50_95: float | None
    map50: float | None
    drop: float | None
    relative_drop: float | None
    size_mb: float
    avg_bits: float | None
    latency_ms: float | None
    provider: str | None


def _kind(name: str) -> str:
    if name == "fp32":
        return "fp32"
    if name.startswith("baseline"):
        return "baseline"
    if name == "recommended":
        return "recommended"
    for prefix in ("random", "first_head", "budget"):
        if name.startswith(prefix):
            return prefix
    return "top_k"


def load_rows(eval_dir: Path) -> list[Row]:
    """Every result of an evaluate run as a row, FP32 first (ground truth mAP when labels exist)."""
    rows = []
    for path in sorted((eval_dir / "results").glob("*.json")):
        data = json.loads(path.read_text())
        acc = data["accuracy"]
        use_gt = acc.get("map50_95_gt") is not None
        lat = data["latency"][0] if data.get("latency") else None
        rows.append(
            Row(
                name=data["name"],
                kind=_kind(data["name"]),
                kept=data.get("kept"),
                map50_95=acc["map50_95_gt"] if use_gt else acc["map50_95_vs_fp32"],
                map50=acc["map50_gt"] if use_gt else acc["map50_vs_fp32"],
                drop=data.get("drop_gt", data.get("drop_vs_fp32")),
                relative_drop=data.get("relative_drop_gt"),
                size_mb=data["size_bytes"] / 1e6,
                avg_bits=data.get("avg_weight_bits"),
                latency_ms=None if lat is None else lat["median_ms"],
                provider=None if lat is None else lat["provider"],
            )
        )
    return sorted(rows, key=lambda r: (KIND_ORDER[r.kind], r.kept or 0, r.name))


def within_target(row: Row, *, fp32: float, max_drop: float, relative: bool) -> bool:
    """Does the row keep its mAP within the allowed drop from FP32?"""
    if row.map50_95 is None:
        return False
    allowed = fp32 * max_drop if relative else max_drop
    return fp32 - row.map50_95 <= allowed + 1e-12


def recommend(rows: list[Row], *, max_drop: float, relative: bool) -> tuple[Row | None, Row | None]:
    """(smallest quantized model within the target, or None; the most accurate one as the closest)."""
    fp32 = next(r for r in rows if r.kind == "fp32").map50_95
    quantized = [r for r in rows if r.kind != "fp32" and r.map50_95 is not None]
    passing = [r for r in quantized if within_target(r, fp32=fp32, max_drop=max_drop, relative=relative)]
    best = min(passing, key=lambda r: (r.size_mb, r.kept or 0), default=None)
    closest = max(quantized, key=lambda r: r.map50_95, default=None)
    return best, closest


def markdown_table(rows: list[Row]) -> list[str]:
    """The summary table as Markdown lines."""
    lines = [
        "| model | kind | kept | mAP50-95 | mAP50 | drop | size MB | avg weight bits | latency ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def f(v, d=4):
            return "-" if v is None else f"{v:.{d}f}"

        lines.append(
            f"| `{r.name}` | {r.kind} | {'-' if r.kept is None else r.kept} | {f(r.map50_95)} | "
            f"{f(r.map50)} | {f(r.drop)} | {r.size_mb:.1f} | {f(r.avg_bits, 2)} | {f(r.latency_ms, 1)} |"
        )
    return lines


def load_search(eval_dir: Path) -> dict[str, Any] | None:
    """The search record, if the run searched."""
    path = eval_dir / "search" / "search.json"
    return json.loads(path.read_text()) if path.is_file() else None
