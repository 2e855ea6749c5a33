"""Assemble ``summary.md``, the plots and a single-file ``report.html`` for an evaluate run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantsweep.core.config import Recovery, WeightQuantConfig
from quantsweep.core.records import read_json, write_text_atomic
from quantsweep.evaluation.accuracy_target import AccuracyTarget
from quantsweep.evaluation.recommend import FP32_SAME_TIME_SHARE
from quantsweep.evaluation.search_moves import MoveKind, read_moves
from quantsweep.onnx_graph.candidates import read_candidates
from quantsweep.quant.scheme import COSTS_KIND, COSTS_NAME, WEIGHTS_DIR
from quantsweep.report.html import render_html
from quantsweep.report.plots import heatmap_plot, sensitivity_plot, tradeoff_plot
from quantsweep.report.table import Row, TargetReport, load_targets, markdown_table
from quantsweep.schemes.scheme_records import FP32_NAME, Policy
from quantsweep.sensitivity.sweep_report import REPORT_KIND, REPORT_NAME
from quantsweep.stages.eval_records import CONFIG_KIND

METRICS = {
    "map50_95_gt": "against the evaluation labels",
    "map50_95_vs_fp32": "against the FP32 model's own detections (the labels give FP32 no real score)",
}
# without labels the same figure is the label-free criterion; say what it means for labelled mAP
UNLABELLED = (
    "against the FP32 model's own detections: no labels were given. A conservative criterion: on "
    'the testbeds the labelled drop was 0.5-1.0x this drop (docs/data.md, "Without labels")'
)


def _sweep_reports(eval_dir: Path) -> dict[str, dict[str, Any]]:
    config = read_json(eval_dir / "eval_config.json", CONFIG_KIND)
    sweep_dir = Path(read_candidates(Path(config["inputs"]["candidates_dir"])).sweep_dir)
    return {
        str(path.parent.relative_to(sweep_dir)): read_json(path, REPORT_KIND)
        for path in sorted(sweep_dir.glob(f"*/*/{REPORT_NAME}.json"))
    }


def _quantizer_lines(eval_dir: Path) -> list[str]:
    """How the artifacts' weights were quantized and recovered, and what the recovery cost."""
    config = read_json(eval_dir / "eval_config.json", CONFIG_KIND)
    path = Path(config["inputs"]["candidates_dir"]) / WEIGHTS_DIR / COSTS_NAME
    if not path.is_file():
        return []
    costs = read_json(path, COSTS_KIND)
    quantizer = WeightQuantConfig.from_dict(costs["quantizer"])
    correction = "on" if quantizer.bias_correction else "off"
    line = f"Quantizer: {quantizer.method.value} weights, bias correction {correction}; recovery: "
    if quantizer.recovery is Recovery.NONE:
        line += "none"
    elif quantizer.recovery is Recovery.AUTO:
        line += "auto (the search distills first where nothing-kept misses a speed target's accuracy target)"
    else:
        seconds = costs.get("recovery_seconds_per_format", {})
        spent = ", ".join(f"{s:.0f} s for {fmt}" for fmt, s in seconds.items())
        line += f"{quantizer.recovery.value}, {quantizer.recovery_steps} steps ({spent or 'reused'})"
    return [line + ".", ""]


def _card(report: TargetReport) -> list[str]:
    """One target's recommendation in a few lines: model, speed-up or size, mAP drop, file, deployment."""
    title = f"### {report.target}"
    if report.unavailable is not None:
        return [title, "", f"Not available on this machine: {report.unavailable}", ""]
    rec = report.recommendation
    if rec is None or rec["recommended"] is None:
        closest = "" if rec is None else f" Closest: `{rec['closest']}`."
        return [title, "", f"**No model meets the accuracy target.**{closest}", *_baseline_lines(rec), ""]
    target = AccuracyTarget.from_dict(rec["accuracy_target"])
    return [
        title,
        "",
        f"{rec['description']}.",
        "",
        _recommended_line(rec),
        f"- mAP50-95 {rec['map50_95']:.4f}: drop {rec['drop']:.4f} ({(rec['relative_drop'] or 0):.2%}) from "
        f"FP32 {rec['reference_map50_95']:.4f}, within the {target.describe()} target.",
        *_cocoeval_line(rec),
        _size_line(rec),
        f"- File: `{rec['file']}`",
        f"- Deploy: `{rec['deploy']}`",
        *_tie_lines(rec),
        *_runtime_lines(rec),
        *_baseline_lines(rec),
        "",
    ]


def _recommended_line(rec: dict[str, Any]) -> str:
    """What ships and what it gains over FP32; FP32 itself where no quantized model beat it."""
    if rec["recommended"] == FP32_NAME:
        return (
            f"- Recommended: **`{FP32_NAME}`**, the float model itself: no quantized model is faster on "
            f"{rec['runtime']} here ({rec['fp32_latency_ms']:.1f} ms, median of one interleaved pass)."
        )
    if rec["objective"] == "speed":
        gain = (
            f"**{rec['speedup']:.2f}x faster than FP32** on {rec['runtime']} "
            f"({rec['latency_ms']:.1f} ms vs {rec['fp32_latency_ms']:.1f} ms, median of one interleaved pass)"
        )
    else:
        gain = f"**{rec['size_reduction']:.1f}x smaller than FP32** ({rec['size_bytes'] / 1e6:.1f} MB)"
    return f"- Recommended: **`{rec['recommended']}`**: {gain}."


def _size_line(rec: dict[str, Any]) -> str:
    """The shipped file's size against FP32's, and the convs it keeps in float."""
    if rec["recommended"] == FP32_NAME:
        return f"- Size {rec['size_bytes'] / 1e6:.1f} MB, nothing quantized."
    kept = ", ".join(f"`{n}`" for n in rec.get("kept_layers") or []) or "none"
    return (
        f"- Size {rec['size_bytes'] / 1e6:.1f} MB ({rec['size_reduction']:.1f}x smaller than FP32); "
        f"kept in float: {kept}."
    )


def _baseline_lines(rec: dict[str, Any] | None) -> list[str]:
    """How the recommendation compares with each baseline (Ultralytics' INT8 export) on this runtime."""
    lines = []
    for base in (rec or {}).get("baselines") or []:
        ratio = base["ratio_to_fp32"]
        speed = "" if ratio is None else f", {ratio:.3f}x FP32 time"
        timed, rounds = base.get("timed_rounds"), rec.get("timing_rounds") if rec else None
        if ratio is not None and timed and rounds and timed < rounds:
            speed += f" over the first {timed} of {rounds} timing rounds (far slower than the candidates)"
        verdict = "meets" if base["meets_target"] else "misses"
        line = f"- Baseline `{base['name']}`: mAP50-95 {base['map50_95']:.4f}{speed} ({verdict} the target)"
        if rec.get("recommended") is not None:
            diff = rec["map50_95"] - base["map50_95"]
            line += f"; the recommendation is {abs(diff):.4f} {'more' if diff >= 0 else 'less'} accurate"
            ours = rec["latency_ms"] / rec["fp32_latency_ms"] if rec.get("latency_ms") else None
            if rec["objective"] == "speed" and ratio and ours:
                line += f" and {ratio / ours:.2f}x as fast"
            elif rec["objective"] == "size":
                line += f" and {base['size_bytes'] / rec['size_bytes']:.2f}x smaller"
        lines.append(line + ".")
    return lines


def _tie_lines(rec: dict[str, Any]) -> list[str]:
    """The pair the shared timing pass could not tell apart, timed again alone, and what it decided."""
    return [
        f"- Timed again, the two alone ({c['rounds']} rounds): `{c['model']}` at "
        f"{c['lower_quartile_ratio']:.3f}x `{c['against']}` by the lower quartile: " + _tie_verdict(c)
        for c in rec.get("tie_checks") or []
    ]


def _tie_verdict(check: dict[str, Any]) -> str:
    if not check["same_time"]:
        return "slower."
    if check["model"] == FP32_NAME and check["lower_quartile_ratio"] <= 1.0:
        return "FP32 is no slower, so it stays."
    if check["model"] == FP32_NAME:
        return (
            f"within {FP32_SAME_TIME_SHARE:.0%}, so FP32 stays: a quantized model replaces it only "
            "where clearly faster."
        )
    return "the same time, so the more accurate is recommended."


def _runtime_lines(rec: dict[str, Any]) -> list[str]:
    """How the runtime ran the figures (float precision) and whether it runs what Torch simulated."""
    lines = []
    if rec.get("fp32_float_precision"):
        ours, fp32 = rec.get("float_precision"), rec["fp32_float_precision"]
        lines.append(f"- Float ops ran in {ours}; the FP32 reference in {fp32} (the runtime's default here).")
    if rec.get("runtime_check"):
        lines.append(f"- Runtime check on {rec['runtime']}: {rec['runtime_check']}.")
    if rec.get("weight_codes"):
        lines.append(f"- Weights: {rec['weight_codes']}.")
    lines += [f"- Passed over `{p['name']}`: {p['reason']}." for p in rec.get("passed_over") or []]
    return lines


def _cocoeval_line(rec: dict[str, Any]) -> list[str]:
    """COCOeval's figure for the same detections, when evaluate could compute it (labels, pycocotools)."""
    ours, reference = rec.get("cocoeval_map50_95"), rec.get("reference_cocoeval_map50_95")
    if ours is None or reference is None:
        return []
    return [
        f"- COCOeval (pycocotools) on the same detections: mAP50-95 {ours:.4f} vs FP32 {reference:.4f} "
        '(its interpolation convention differs from ours; docs/data.md, "COCO data").'
    ]


def _moves_lines(search: dict[str, Any], *, target: str, recommended: str | None) -> list[str]:
    """The moves the search weighed where nothing-kept missed (search_moves.py), as measured."""
    moves = read_moves(search.get("moves"))
    if not moves:
        return []
    nothing_kept = moves[0].score_before  # before any move (the island search may start recovered)
    verdict = "within" if nothing_kept >= search["threshold"] else "short of"
    lines = [
        f"Nothing kept scored {nothing_kept:.4f}, {verdict} the target. Moves weighed, cheapest per "
        f"inference first, then by one-time seconds; every score on the {target} target's runtime:",
        "",
        "| move | mAP50-95 | gain | time per inference | one-time | outcome |",
        "|---|---|---|---|---|---|",
    ]
    for move in moves:
        if move.kind is MoveKind.RECOVERY:
            what, per = f"recovery: {move.label}", "none"
        else:
            if move.kind is MoveKind.FASTER_IN_FLOAT:
                what = f"float the {len(move.kept)} convs the runtime profiles faster in float"
            else:
                layers = ", ".join(f"`{n}`" for n in move.kept)
                what = f"float {layers}" + (" (recovered weights)" if move.recovered else "")
            per = (
                "not priced"
                if move.per_inference_ms is None
                else f"{move.per_inference_ms:+.3f} ms (profile)"
            )
            if move.x_nothing_kept is not None:
                per += f", {move.x_nothing_kept:.3f}x nothing kept (timed whole, lower quartiles)"
        outcome = move.outcome
        if move.finalist:
            outcome += f"; model `{move.finalist}`" + (
                ", recommended" if move.finalist == recommended else ""
            )
        once = f"{move.seconds:.0f} s" if move.seconds else "read back"
        score, gain = ("-", "-") if move.score is None else (f"{move.score:.4f}", f"{move.gain:+.4f}")
        lines.append(f"| {what} | {score} | {gain} | {per} | {once} | {outcome} |")
    return [*lines, ""]


def _islands_lines(islands: dict[str, Any] | None, kept: list[str]) -> list[str]:
    """How the search ordered float islands and what the kept ones cost (island_costs.py)."""
    if not islands or not kept:
        return []
    if "kept_cost_ms" not in islands:
        return ["Float islands were tried in the sweep's rank order.", ""]
    costs = islands["kept_cost_ms"]
    each = ", ".join(f"`{name}` {costs[name]:+.3f} ms" for name in kept)
    return [
        f"Float islands were tried by sensitivity per millisecond they cost on {islands['runtime']} "
        f"(per-conv profile of FP32 and nothing-kept, whose conv units take {islands['int8_ms']:.2f} ms); "
        f"kept: {each}, about {sum(costs.values()):+.3f} ms per inference before requantization at "
        "their borders.",
        "",
    ]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _target_section(report: TargetReport, plots_dir: Path) -> tuple[list[str], list[Path]]:
    if report.unavailable is not None or not report.rows:
        return [], []
    lines = [f"## {report.target}", ""]
    if report.search is not None:
        s = report.search
        lines += [
            f"Search: {_count(len(s['evaluations']), 'evaluation')} on {report.target}, target mAP50-95 >= "
            f"{s['threshold']:.4f} (FP32 {s['reference']:.4f}); fewest kept: "
            f"{', '.join(f'`{n}`' for n in s['kept']) or 'none'}; timed finalists: "
            f"{', '.join(f'`{n}`' for n in s['finalists']) or 'none'}.",
            "",
            *_moves_lines(
                s, target=report.target, recommended=(report.recommendation or {}).get("recommended")
            ),
            *_islands_lines(s.get("islands"), s["kept"]),
        ]
    if report.recommendation is not None:
        metric = report.recommendation["metric"]
        words = METRICS[metric] if report.labelled or metric == "map50_95_gt" else UNLABELLED
        lines += [f"mAP50-95 here is {words}.", ""]
    lines += [*markdown_table(report.rows), ""]
    for name, reason in (report.skipped or {}).items():
        lines += [f"Not scored: `{name}`: {reason}; it can be neither faster nor smaller.", ""]
    comparison = _reference_comparison(report.rows)
    if comparison:
        lines += ["Sensitivity ranking against the reference schemes at the same number of kept layers:", ""]
        lines += [*comparison, ""]
    threshold = None if report.recommendation is None else report.recommendation["threshold"]
    slug = report.target.replace("/", "_")
    plots = [
        tradeoff_plot(
            report.rows,
            x_field="latency_ms",
            x_label=f"latency ms on {report.target} (batch 1, interleaved pass)",
            path=plots_dir / f"map_vs_latency_{slug}.png",
            target=threshold,
        )
    ]
    if report.recommendation and report.recommendation["objective"] == "size":
        plots.append(
            tradeoff_plot(
                report.rows,
                x_field="avg_bits",
                x_label="average stored weight bits",
                path=plots_dir / f"map_vs_bits_{slug}.png",
                target=threshold,
            )
        )
    return lines, plots


def _reference_comparison(rows: list[Row]) -> list[str]:
    ranked = {r.kept: r for r in rows if r.kind == Policy.TOP_K and r.kept}
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


def build_report(eval_dir: Path) -> Path:
    """Write the summary, plots and HTML into ``eval_dir``; return the path of ``summary.md``."""
    eval_dir = Path(eval_dir)
    targets = load_targets(eval_dir)
    plots_dir = eval_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    cards = ["# quantsweep report", "", "## Recommendations", "", *_quantizer_lines(eval_dir)]
    for report in targets:
        cards += _card(report)
    body, plots = [], []
    for report in targets:
        lines, target_plots = _target_section(report, plots_dir)
        body += lines
        plots += target_plots
    reports = _sweep_reports(eval_dir)
    for combination, report in reports.items():
        plots.append(
            sensitivity_plot(report, path=plots_dir / f"sensitivity_{combination.replace('/', '_')}.png")
        )
    if reports:
        plots.append(heatmap_plot(reports, path=plots_dir / "sensitivity_heatmap.png"))
    lines = [*cards, *body, *[f"![{p.stem}](plots/{p.name})" for p in plots], ""]
    summary = eval_dir / "summary.md"
    write_text_atomic(summary, "\n".join(lines))
    write_text_atomic(eval_dir / "report.html", render_html(cards, body, plots))
    return summary
