"""PNG plots a person can read at a glance: trade-offs with their Pareto front, sensitivities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from quantsweep.report.table import Row
from quantsweep.schemes.scheme_records import Policy

COLOURS = {
    Policy.FP32: "black",
    Policy.BASELINE: "tab:gray",
    Policy.SEARCH: "tab:cyan",
    Policy.TOP_K: "tab:blue",
    Policy.BUDGET: "tab:purple",
    Policy.RANDOM: "tab:orange",
    Policy.FIRST_HEAD: "tab:green",
}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower x, higher y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -np.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def tradeoff_plot(
    rows: Sequence[Row], *, x_field: str, x_label: str, path: Path, target: float | None
) -> Path:
    """mAP50-95 against ``x_field`` for every model, Pareto front drawn, target line if given."""
    usable = [r for r in rows if getattr(r, x_field) is not None and r.map50_95 is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for kind, colour in COLOURS.items():
        pts = [r for r in usable if r.kind == kind]
        if pts:
            ax.scatter(
                [getattr(r, x_field) for r in pts],
                [r.map50_95 for r in pts],
                c=colour,
                label=kind,
                s=30,
                zorder=3,
            )
    chosen = [r for r in usable if r.recommended]
    if chosen:
        ax.scatter(
            [getattr(r, x_field) for r in chosen],
            [r.map50_95 for r in chosen],
            s=220,
            marker="*",
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.5,
            label="recommended",
            zorder=4,
        )
    points = [(getattr(r, x_field), r.map50_95) for r in usable]
    front = pareto_front(points)
    ax.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        "--",
        c="tab:red",
        lw=1,
        label="Pareto front",
        zorder=2,
    )
    marked = {r.name for r in usable if r.kind == Policy.FP32 or r.recommended}
    labelled = {usable[i].name for i in front} | marked
    _label_points(ax, [r for r in usable if r.name in labelled], x_field)
    if target is not None:
        ax.axhline(target, c="tab:red", lw=0.8, alpha=0.6, label=f"target {target:.3f}")
    ax.set_xlabel(x_label)
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _label_points(ax, rows: Sequence[Row], x_field: str) -> None:
    """Name the given points, alternating above and below in x order so neighbours do not collide."""
    ordered = sorted(rows, key=lambda r: (getattr(r, x_field), r.map50_95))
    for i, r in enumerate(ordered):
        ax.annotate(
            r.name + (" (recommended)" if r.recommended else ""),
            (getattr(r, x_field), r.map50_95),
            fontsize=7,
            xytext=(5, 9 if i % 2 == 0 else -13),
            textcoords="offset points",
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"},
        )


def sensitivity_plot(report: dict[str, Any], *, path: Path, top_k: int = 10) -> Path:
    """One bar per layer in execution order, the top ``top_k`` highlighted and named."""
    rows = sorted(report["layers"], key=lambda r: r["layer"]["exec_order"])
    values = np.array([max(r["sensitivity"], 0.0) for r in rows])
    top = {r["name"] for r in sorted(report["layers"], key=lambda r: r["rank"])[:top_k]}
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    ax.bar(range(len(rows)), values, color=["tab:red" if r["name"] in top else "tab:blue" for r in rows])
    for i, r in enumerate(rows):
        if r["name"] in top:
            ax.annotate(
                r["name"].removeprefix("model."),
                (i, values[i]),
                fontsize=6,
                rotation=60,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_yscale("symlog", linthresh=max(values.max() * 1e-3, 1e-12))
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel(report["rank_by"])
    ax.set_title(f"Per-layer sensitivity, {report['combination']} (top {top_k} in red)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmap_plot(reports: dict[str, dict[str, Any]], *, path: Path, top: int = 40) -> Path:
    """The ``top`` most sensitive layers x combinations, each column scaled to its own maximum (log)."""
    names = [
        r["name"]
        for r in sorted(next(iter(reports.values()))["layers"], key=lambda r: r["layer"]["exec_order"])
    ]
    matrix = np.zeros((len(names), len(reports)))
    for j, report in enumerate(reports.values()):
        value = {r["name"]: max(r["sensitivity"], 0.0) for r in report["layers"]}
        column = np.array([value.get(n, 0.0) for n in names])
        matrix[:, j] = column / column.max() if column.max() > 0 else column
    # the most sensitive rows in any combination, kept in execution order, so every label is legible
    keep = sorted(np.argsort(-matrix.max(axis=1))[:top])
    matrix, names = matrix[keep], [names[i] for i in keep]
    fig, ax = plt.subplots(figsize=(4.5 + 1.6 * len(reports), 0.24 * len(names) + 2.2), dpi=110)
    image = ax.imshow(np.log10(matrix + 1e-4), aspect="auto", cmap="magma", vmin=-4, vmax=0)
    ax.set_xticks(range(len(reports)), list(reports), rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(names)), [n.removeprefix("model.") for n in names], fontsize=8)
    fig.colorbar(image, ax=ax, label="log10 sensitivity / column max")
    ax.set_title(f"Sensitivity of the {len(names)} most sensitive layers per combination", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
