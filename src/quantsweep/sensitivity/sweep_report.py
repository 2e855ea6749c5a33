"""Per-combination sensitivity reports (JSON + Markdown) and the sweep-wide index."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep.core.config import QuantFormat, RankMetric
from quantsweep.core.records import write_json, write_text_atomic
from quantsweep.models.network import LayerInfo
from quantsweep.sensitivity.engine import LayerResult

REPORT_KIND = "layer_sensitivity_report"
REPORT_NAME = "layer-sensitivity-report"


@dataclass(frozen=True)
class IndexRow:
    """One combination's line in ``sweep_index``."""

    combination: str
    status: str
    elapsed_s: float
    layers_measured: int
    top_layers: tuple[str, ...]
    report: str | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.__dict__, "top_layers": list(self.top_layers)}


def sensitivity(result: LayerResult, rank_by: RankMetric) -> float:
    """The ranking value of a result (higher = more sensitive); NaN ranks last."""
    value = getattr(result, rank_by.value)
    return -math.inf if value is None or math.isnan(value) else float(value)


def rank(results: Sequence[LayerResult], rank_by: RankMetric) -> list[LayerResult]:
    """Most sensitive first; ties broken by name so the order is reproducible."""
    return sorted(results, key=lambda r: (-sensitivity(r, rank_by), r.name))


def build_report(
    fmt: QuantFormat,
    *,
    layers: Sequence[LayerInfo],
    ranked: Sequence[LayerResult],
    rank_by: RankMetric,
    top_k: int,
    context: dict[str, Any],
) -> dict[str, Any]:
    """The report payload: every measured layer in ``ranked`` order, with its metrics and layer facts."""
    info = {layer.name: layer for layer in layers}
    rows = []
    for position, result in enumerate(ranked, start=1):
        rows.append(
            {
                "rank": position,
                "name": result.name,
                "sensitivity": sensitivity(result, rank_by),
                "metrics": result.to_dict(),
                "layer": info[result.name].to_dict(),
            }
        )
    measured = {r.name for r in ranked}
    return {
        "format": fmt.to_dict(),
        "combination": fmt.name,
        "rank_by": rank_by.value,
        "top_k": top_k,
        **context,
        "layers": rows,
        "top_layers": [row["name"] for row in rows[:top_k]],
        "not_measured": [layer.name for layer in layers if layer.name not in measured],
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}g}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable top-K table."""
    ref = report.get("reference", {})
    lines = [
        f"# Layer sensitivity: {report['combination']}",
        "",
        f"Model `{report.get('model')}`, {report.get('images')} images at {report.get('imgsz')} px, "
        f"method `{report.get('method')}`, ranked by `{report['rank_by']}` (higher = more sensitive).",
        f"FP32 reference: mAP50-95 vs ground truth {_fmt(ref.get('map50_95_gt'))}, "
        f"vs its own detections {_fmt(ref.get('map50_95_vs_self'))}.",
        "",
        f"## Top {report['top_k']} of {len(report['layers'])} layers",
        "",
        "| rank | layer | measured | shape | params | box_error px | class_error | nmse | sqnr dB "
        "| mAP drop vs FP32 | mAP drop vs GT |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["layers"][: report["top_k"]]:
        m, layer = row["metrics"], row["layer"]
        shape = "x".join(str(d) for d in layer["weight_shape"])
        lines.append(
            f"| {row['rank']} | `{row['name']}` | {m.get('method', 'exact')} | {shape} | {layer['params']} "
            f"| {_fmt(m['box_error'])} | {_fmt(m['class_error'])} | {_fmt(m['nmse'])} "
            f"| {_fmt(m['sqnr_db'], 3)} "
            f"| {_fmt(m['map_drop_vs_fp32'])} | {_fmt(m['map_drop_gt'])} |"
        )
    if report["not_measured"]:
        lines += ["", f"Not measured (see failures.json): {', '.join(report['not_measured'])}"]
    return "\n".join(lines) + "\n"


def write_report(directory: Path, report: dict[str, Any]) -> Path:
    """Write ``layer-sensitivity-report.{json,md}``; return the JSON path."""
    json_path = directory / f"{REPORT_NAME}.json"
    write_json(json_path, REPORT_KIND, report)
    write_text_atomic(directory / f"{REPORT_NAME}.md", render_markdown(report))
    return json_path


def write_index(run_dir: Path, rows: Sequence[IndexRow]) -> None:
    """``sweep_index.json`` and ``sweep_index.csv``, one row per combination."""
    write_json(run_dir / "sweep_index.json", "sweep_index", {"combinations": [r.to_dict() for r in rows]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["combination", "status", "elapsed_s", "layers_measured", "top_layers", "report", "reason"]
    )
    for r in rows:
        writer.writerow(
            [
                r.combination,
                r.status,
                f"{r.elapsed_s:.2f}",
                r.layers_measured,
                " ".join(r.top_layers),
                r.report or "",
                r.reason or "",
            ]
        )
    write_text_atomic(run_dir / "sweep_index.csv", buffer.getvalue())
