"""Assemble ``summary.md``, the plots and a single-file ``report.html`` for an evaluate run."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from quantsweep.records import write_text_atomic
from quantsweep.report.plots import heatmap_plot, sensitivity_plot, tradeoff_plot
from quantsweep.report.table import Row, load_rows, load_search, markdown_table, recommend

REPORT_NAME = "layer-sensitivity-report.json"


def _sweep_reports(eval_dir: Path) -> dict[str, dict[str, Any]]:
    config = json.loads((eval_dir / "eval_config.json").read_text())
    candidates = json.loads((Path(config["candidates_dir"]) / "candidates.json").read_text())
    sweep_dir = Path(candidates["sweep_dir"])
    return {
        str(path.parent.relative_to(sweep_dir)): json.loads(path.read_text())
        for path in sorted(sweep_dir.glob(f"*/*/{REPORT_NAME}"))
    }


def _recommendation(rows: list[Row], *, max_drop: float, relative: bool) -> list[str]:
    best, closest = recommend(rows, max_drop=max_drop, relative=relative)
    rule = f"{max_drop:.1%} relative" if relative else f"{max_drop:.3f} absolute"
    if best is not None:
        return [
            f"**Recommendation: `{best.name}`**: the smallest model within a {rule} mAP50-95 drop from "
            f"FP32 ({best.map50_95:.4f}, {best.size_mb:.1f} MB, {best.kept} layers kept at high precision)."
        ]
    return [
        f"**No candidate stays within a {rule} mAP50-95 drop from FP32.** Closest: `{closest.name}` "
        f"({closest.map50_95:.4f}, {closest.kept} layers kept)."
        if closest
        else "No quantized candidate."
    ]


def _reference_comparison(rows: list[Row]) -> list[str]:
    ranked = {r.kept: r for r in rows if r.kind == "top_k" and r.kept}
    lines = []
    for ref in (r for r in rows if r.kind in ("random", "first_head")):
        mine = ranked.get(ref.kept)
        if mine is not None and mine.map50_95 is not None and ref.map50_95 is not None:
            verdict = "beats" if mine.map50_95 > ref.map50_95 else "does not beat"
            lines.append(
                f"- {ref.kept} kept: sensitivity-guided `{mine.name}` {mine.map50_95:.4f} {verdict} "
                f"`{ref.name}` {ref.map50_95:.4f}"
            )
    return lines


def build_report(eval_dir: Path, *, max_drop: float = 0.01, relative: bool = True) -> Path:
    """Write the summary, plots and HTML into ``eval_dir``; return the path of ``summary.md``."""
    rows = load_rows(eval_dir)
    search = load_search(eval_dir)
    if search is not None:
        max_drop, relative = search["max_drop"], search["drop_mode"] == "relative"
    fp32 = next(r for r in rows if r.kind == "fp32").map50_95
    target = fp32 * (1 - max_drop) if relative else fp32 - max_drop
    plots_dir = eval_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = [
        tradeoff_plot(
            rows,
            x_field="avg_bits",
            x_label="average weight bits",
            path=plots_dir / "map_vs_bits.png",
            target=target,
        ),
        tradeoff_plot(
            rows,
            x_field="latency_ms",
            x_label=f"latency ms ({rows[0].provider}, batch 1)",
            path=plots_dir / "map_vs_latency.png",
            target=target,
        ),
    ]
    reports = _sweep_reports(eval_dir)
    for combination, report in reports.items():
        plots.append(
            sensitivity_plot(report, path=plots_dir / f"sensitivity_{combination.replace('/', '_')}.png")
        )
    if reports:
        plots.append(heatmap_plot(reports, path=plots_dir / "sensitivity_heatmap.png"))
    lines = ["# quantsweep report", "", *_recommendation(rows, max_drop=max_drop, relative=relative), ""]
    if search is not None:
        lines += [
            f"Search: {len(search['evaluations'])} ONNX evaluations, target {search['metric']} >= "
            f"{search['target']:.4f} (FP32 {search['reference']:.4f}); kept: "
            f"{', '.join(f'`{n}`' for n in search['kept']) or 'none'}.",
            "",
        ]
    lines += markdown_table(rows)
    comparison = _reference_comparison(rows)
    if comparison:
        lines += [
            "",
            "Sensitivity ranking against the reference schemes at the same number of kept layers:",
            "",
            *comparison,
        ]
    lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in plots], ""]
    summary = eval_dir / "summary.md"
    write_text_atomic(summary, "\n".join(lines))
    write_text_atomic(eval_dir / "report.html", _html(lines, plots))
    return summary


def _html(lines: list[str], plots: list[Path]) -> str:
    body, table = [], []
    for line in lines:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                cells = [html.escape(c.strip().strip("`")) for c in line.strip("|").split("|")]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{html.escape(line[2:].replace('`', ''))}</li></ul>")
        elif line and not line.startswith("!["):
            body.append(f"<p>{html.escape(line.replace('**', '').replace('`', ''))}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        body.append(
            f'<figure><img alt="{plot.stem}" src="data:image/png;base64,{data}">'
            f"<figcaption>{plot.stem}</figcaption></figure>"
        )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
    )
    # the script lets a headless browser confirm what rendered
    script = (
        "<script>window.addEventListener('load',()=>{const ok=[...document.images].filter("
        "i=>i.complete&&i.naturalWidth>0).length;document.body.dataset.imagesRendered=ok;"
        "document.body.dataset.tableRows=document.querySelectorAll('tr').length;});</script>"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>quantsweep report</title>"
        f"<style>{style}</style>{script}</head><body>{''.join(body)}</body></html>"
    )
