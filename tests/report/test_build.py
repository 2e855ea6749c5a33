"""The report reads an evaluate run's results and states the right recommendation for the target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantsweep.cli.main import main
from quantsweep.records import write_json
from quantsweep.report.build import build_report

# name: (kept, mAP50-95 against labels, size MB); FP32 0.900
MODELS = {
    "fp32": (None, 0.900, 60.0),
    "baseline_int8": (0, 0.880, 16.0),
    "k0": (0, 0.852, 8.0),
    "k5": (5, 0.893, 8.5),
    "k10": (10, 0.899, 9.5),
    "random_k5": (5, 0.520, 9.0),
    "first_head_k5": (5, 0.800, 8.6),
}


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    """An evaluate run directory as the evaluate stage writes it (no sweep reports, no search)."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    candidates = tmp_path / "candidates"
    write_json(
        candidates / "candidates.json", "candidates_index", {"sweep_dir": str(sweep_dir), "artifacts": []}
    )
    run = tmp_path / "eval"
    write_json(run / "eval_config.json", "eval_config", {"candidates_dir": str(candidates)})
    for name, (kept, gt, size_mb) in MODELS.items():
        result = {
            "name": name,
            "kept": kept,
            "accuracy": {
                "map50_95_gt": gt,
                "map50_gt": gt + 0.05,
                "map50_95_vs_fp32": 0.9,
                "map50_vs_fp32": 0.95,
            },
            "latency": [{"provider": "CPUExecutionProvider", "median_ms": 10.0 + (kept or 0)}],
            "size_bytes": int(size_mb * 1e6),
            "avg_weight_bits": 16.0 if name == "fp32" else 4.0 + 0.1 * (kept or 0),
            "drop_gt": 0.9 - gt,
        }
        write_json(run / "results" / f"{name}.json", "candidate_result", result)
    return run


def test_relative_target_recommends_the_smallest_passing_model(eval_dir) -> None:
    summary = build_report(eval_dir, max_drop=0.05, relative=True).read_text()
    # 5% relative: 0.855 needed; k0 (0.852) misses it, k5 (8.5 MB) is the smallest that passes
    assert "**Recommendation: `k5`**" in summary and "5.0% relative" in summary
    lines = summary.splitlines()
    table = [line for line in lines if line.startswith("| `")]
    assert table[0].startswith("| `fp32` | fp32 | - | 0.9000 |")
    assert "| `k5` | top_k | 5 | 0.8930 |" in summary
    assert "- 5 kept: sensitivity-guided `k5` 0.8930 beats `random_k5` 0.5200" in lines
    assert "- 5 kept: sensitivity-guided `k5` 0.8930 beats `first_head_k5` 0.8000" in lines
    html = (eval_dir / "report.html").read_text()
    assert html.count("<tr>") == len(MODELS) + 1 and "Recommendation: k5" in html
    assert (eval_dir / "plots" / "map_vs_bits.png").stat().st_size > 5000


def test_absolute_drop_mode_reads_max_drop_in_map_points(eval_dir, capsys) -> None:
    # 0.05 absolute: 0.850 needed, so k0 (0.852, 8.0 MB) passes; relative 5% would not take it
    assert main(["report", "--eval", str(eval_dir), "--max-drop", "0.05", "--drop-mode", "absolute"]) == 0
    summary = (eval_dir / "summary.md").read_text()
    assert "**Recommendation: `k0`**" in summary and "0.050 absolute" in summary
    assert "Recommendation: `k0`" in capsys.readouterr().out


def test_no_candidate_within_target_names_the_closest(eval_dir) -> None:
    summary = build_report(eval_dir, max_drop=0.001, relative=True).read_text()
    assert "**No candidate stays within a 0.1% relative mAP50-95 drop from FP32.**" in summary
    assert "Closest: `k10` (0.8990, 10 layers kept)" in summary
    assert "Recommendation" not in summary


def test_search_record_sets_the_target(eval_dir) -> None:
    search = {
        "metric": "map50_95_gt",
        "reference": 0.9,
        "target": 0.85,
        "max_drop": 0.05,
        "drop_mode": "absolute",
        "evaluations": [{"step": "none kept", "kept": [], "score": 0.852}],
        "kept": [],
    }
    (eval_dir / "search").mkdir()
    (eval_dir / "search" / "search.json").write_text(json.dumps(search))
    summary = build_report(eval_dir, max_drop=0.01, relative=True).read_text()  # overridden by the search
    assert "**Recommendation: `k0`**" in summary
    assert "Search: 1 ONNX evaluations, target map50_95_gt >= 0.8500 (FP32 0.9000); kept: none." in summary


def test_report_of_a_folder_without_results_exits_2(tmp_path, capsys) -> None:
    assert main(["report", "--eval", str(tmp_path)]) == 2
    assert "is not an evaluate run directory" in capsys.readouterr().err
