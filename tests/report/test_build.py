"""The report reads an evaluate run's records and shows each target's recommendation first."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantsweep.cli.main import main
from quantsweep.core.config import DropMode
from quantsweep.core.records import write_json
from quantsweep.evaluation.accuracy_target import AccuracyTarget
from quantsweep.evaluation.recommend import recommend
from quantsweep.evaluation.scoring import Accuracy
from quantsweep.evaluation.search_moves import MoveKind, SearchMove, island_label
from quantsweep.onnx_graph.candidates import Artifact, CandidatesIndex, TargetCandidates
from quantsweep.report.build import build_report
from quantsweep.stages.eval_records import ResultStore
from quantsweep.targets import get_backend
from quantsweep.targets.timing import Timing

# name: (policy, kept, mAP50-95 against labels, size MB, time ratio to FP32); FP32 0.900
MODELS = {
    "fp32": ("fp32", None, 0.900, 60.0, 1.0),
    "k0": ("top_k", 0, 0.852, 8.0, 0.50),
    "k5": ("top_k", 5, 0.893, 8.5, 0.55),
    "k10": ("top_k", 10, 0.899, 9.5, 0.60),
    "random_k5": ("random", 5, 0.520, 9.0, 0.56),
    "first_head_k5": ("first_head", 5, 0.800, 8.6, 0.57),
}


def _eval_dir(
    tmp_path: Path, target: AccuracyTarget, targets=("ort-cpu", "size"), *, labelled: bool = True
) -> Path:
    """An evaluate run as the evaluate stage writes it (no sweep reports, no search); without
    labels every figure is against the FP32 model's own detections."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    candidates = tmp_path / "candidates"
    fp32 = Artifact("fp32", "fp32.onnx", "fp32", None, 60_000_000, 32.0, None, None)
    index = CandidatesIndex(str(sweep_dir), 320, {t: TargetCandidates(t, "-", "-", [fp32]) for t in targets})
    index.write(candidates)
    run = tmp_path / "eval"
    config = {"inputs": {"candidates_dir": str(candidates)}, "targets": list(targets)}
    write_json(run / "eval_config.json", "eval_config", config)
    metric = "map50_95_gt" if labelled else "map50_95_vs_fp32"
    for name in targets:
        store = ResultStore(
            run / "results" / name,
            target=name,
            candidates_dir=candidates,
            metric=metric,
            reference=0.9,
        )
        for model, (policy, kept, value, size_mb, ratio) in MODELS.items():
            record = {
                "name": model,
                "file": str(candidates / name / f"{model}.onnx"),
                "policy": policy,
                "kept": kept,
                "kept_layers": None if kept is None else [f"layer{i}" for i in range(kept)],
                "size_bytes": int(size_mb * 1e6),
                "avg_weight_bits": 32.0 if model == "fp32" else 4.0 + 0.1 * (kept or 0),
            }
            if model != "fp32":  # materialize's runtime check of the artifact
                record |= {
                    "runtime_agrees": True,
                    "runtime_summary": "default agrees with Torch (rel. error 0.010)",
                }
            if labelled:
                accuracy = Accuracy(value, value + 0.05, 0.9, 0.95, value - 0.004)
            else:
                accuracy = Accuracy(None, None, value, value + 0.05, None)
            store.write_result(record, accuracy)
            timing = Timing(
                20 * ratio, 19 * ratio, 22 * ratio, ratio, 0.01, 35, 7, "CPUExecutionProvider", "f32"
            )
            store.write_timing(model, timing)
        recommend(get_backend(name), store, reference=0.9, metric=metric, target=target)
    return run


@pytest.mark.parametrize("labelled", [True, False])
def test_each_table_says_what_its_map_is_measured_against(labelled, tmp_path) -> None:
    eval_dir = _eval_dir(tmp_path, AccuracyTarget(0.05, DropMode.RELATIVE), labelled=labelled)
    summary = build_report(eval_dir).read_text()
    unlabelled = "against the FP32 model's own detections: no labels were given. A conservative"
    if labelled:
        assert summary.count("mAP50-95 here is against the evaluation labels.") == 2
        assert unlabelled not in summary
    else:  # not "the labels give FP32 no real score": there were none
        assert summary.count(f"mAP50-95 here is {unlabelled}") == 2
        assert "labelled drop was 0.5-1.0x this drop" in summary
        assert "no real score" not in summary


def test_cards_show_each_targets_recommendation_and_tables_follow(tmp_path) -> None:
    eval_dir = _eval_dir(tmp_path, AccuracyTarget(0.05, DropMode.RELATIVE))
    summary = build_report(eval_dir).read_text()
    cards = summary[: summary.index("\n## ort-cpu")]
    # 5% relative: 0.855 needed; k0 (0.852) misses it. Speed: k5 is the fastest passing (0.55x).
    # Size: k5 (8.5 MB) is the smallest passing one.
    assert "- Recommended: **`k5`**: **1.82x faster than FP32** on onnxruntime" in cards
    assert "- Recommended: **`k5`**: **7.1x smaller than FP32** (8.5 MB)" in cards
    assert "within the 5.0% relative target" in cards
    assert "- COCOeval (pycocotools) on the same detections: mAP50-95 0.8890 vs FP32 0.8960" in cards
    assert "- Runtime check on onnxruntime: default agrees with Torch (rel. error 0.010)." in cards
    assert "- Float ops ran in f32; the FP32 reference in f32 (the runtime's default here)." in cards
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert table[1].startswith("| `fp32` | fp32 | - | 0.9000 |")
    assert "| **`k5`** (recommended) | top_k | 5 | 0.8930 |" in summary
    assert "- 5 kept: sensitivity-guided `k5` 0.8930 beats `random_k5` 0.5200" in summary
    html = (eval_dir / "report.html").read_text()
    assert html.count('class="card"') == 2 and html.count('class="recommended"') == 2
    assert (eval_dir / "plots" / "map_vs_bits_size.png").stat().st_size > 5000
    assert (eval_dir / "plots" / "map_vs_latency_ort-cpu.png").stat().st_size > 5000


def test_absolute_drop_mode_reads_max_drop_in_map_points(tmp_path, capsys) -> None:
    # 0.05 absolute: 0.850 needed, so k0 (0.852, fastest and smallest) passes; 5% relative would not
    eval_dir = _eval_dir(tmp_path, AccuracyTarget(0.05, DropMode.ABSOLUTE))
    assert main(["report", "--eval", str(eval_dir)]) == 0
    summary = (eval_dir / "summary.md").read_text()
    assert summary.count("- Recommended: **`k0`**") == 2 and "0.050 absolute" in summary
    assert "Recommended: **`k0`**" in capsys.readouterr().out


def test_no_model_within_target_names_the_closest(tmp_path) -> None:
    eval_dir = _eval_dir(tmp_path, AccuracyTarget(0.001), targets=("size",))
    summary = build_report(eval_dir).read_text()
    assert "**No model meets the accuracy target.** Closest: `k10`." in summary


def test_unavailable_target_is_said_not_dropped(tmp_path) -> None:
    eval_dir = _eval_dir(tmp_path, AccuracyTarget(0.01), targets=("size", "openvino"))
    write_json(
        eval_dir / "results" / "openvino" / "unavailable.json",
        "target_unavailable",
        {"target": "openvino", "reason": "the openvino package is not installed"},
    )
    summary = build_report(eval_dir).read_text()
    assert "### openvino\n\nNot available on this machine: the openvino package is not installed" in summary


@pytest.mark.parametrize("folder", ["empty", "results_only"])
def test_report_of_a_folder_that_is_no_evaluate_run_exits_2(folder, tmp_path, capsys) -> None:
    if folder == "results_only":
        (tmp_path / "results").mkdir()
    assert main(["report", "--eval", str(tmp_path)]) == 2
    assert "is not an evaluate run directory" in capsys.readouterr().err


def test_the_search_card_shows_each_measured_move_and_which_one_was_recommended(tmp_path) -> None:
    eval_dir = _eval_dir(tmp_path, AccuracyTarget(0.05, DropMode.RELATIVE), targets=("ort-cpu",))
    island = SearchMove(
        MoveKind.ISLAND,
        island_label(("layer0",)),
        score_before=0.852,
        score=0.893,
        met=True,
        per_inference_ms=0.004,
        seconds=3.2,
        x_nothing_kept=1.06,
        finalist="k5",  # the recommendation (5% relative: k0 misses, k5 is the fastest passing)
        outcome="meets the target but runs at 1.060x nothing kept; timed against the recovered path",
    )
    recovery = SearchMove(
        MoveKind.RECOVERY,
        "distill",
        score_before=0.852,
        score=0.853,
        met=False,
        per_inference_ms=0.0,
        seconds=71.0,
    )
    faster = SearchMove(  # timed whole, not faster: not scored
        MoveKind.FASTER_IN_FLOAT,
        island_label(("layer1", "layer2")),
        score_before=0.852,
        score=None,
        met=False,
        per_inference_ms=-0.41,
        seconds=4.0,
        x_nothing_kept=1.05,
        outcome="not faster whole",
    )
    search = {
        "evaluations": [{"kept": [], "score": 0.852}],
        "threshold": 0.855,
        "reference": 0.9,
        "kept": [],
        "finalists": ["k5"],
        "islands": {"order": "gain-per-ms", "free_tried": []},
        "moves": [faster.to_dict(), island.to_dict(), recovery.to_dict()],
    }
    write_json(eval_dir / "search" / "ort-cpu" / "search.json", "scheme_search", search)
    card = build_report(eval_dir).read_text().split("\n## ort-cpu\n")[1]
    assert "Nothing kept scored 0.8520, short of the target." in card
    rows = [
        line for line in card.splitlines() if line.startswith("| float ") or line.startswith("| recovery")
    ]
    assert rows == [
        "| float the 2 convs the runtime profiles faster in float | - | - | -0.410 ms (profile), 1.050x "
        "nothing kept (timed whole, lower quartiles) | 4 s | not faster whole |",
        "| float `layer0` | 0.8930 | +0.0410 | +0.004 ms (profile), 1.060x nothing kept "
        "(timed whole, lower quartiles) | 3 s "
        "| meets the target but runs at 1.060x nothing kept; timed against the recovered path; model `k5`, "
        "recommended |",
        "| recovery: distill | 0.8530 | +0.0010 | none | 71 s |  |",
    ]


def test_the_card_says_which_cpus_run_the_recommendations_weight_codes() -> None:
    from quantsweep.report.build import _runtime_lines  # noqa: PLC0415

    note = "7-bit codes (-64..63): exact on every x86 CPU, with VNNI or without, and on ARM"
    assert f"- Weights: {note}." in _runtime_lines({"runtime": "onnxruntime", "weight_codes": note})
    assert not any(line.startswith("- Weights") for line in _runtime_lines({"runtime": "onnxruntime"}))


def test_the_card_says_what_the_pairs_own_timing_pass_decided() -> None:
    from quantsweep.report.build import _tie_lines  # noqa: PLC0415

    check = {"model": "search_k1", "against": "k0", "lower_quartile_ratio": 1.004, "rounds": 15}
    assert _tie_lines({"tie_checks": [{**check, "same_time": True}]}) == [
        "- Timed again, the two alone (15 rounds): `search_k1` at 1.004x `k0` by the lower quartile: "
        "the same time, so the more accurate is recommended."
    ]
    assert _tie_lines({"tie_checks": [{**check, "same_time": False}]})[0].endswith(
        "`k0` by the lower quartile: slower."
    )
    assert _tie_lines({}) == []  # recommendations written before tie checks existed
    fp32 = {**check, "model": "fp32", "lower_quartile_ratio": 1.035, "same_time": True}
    assert _tie_lines({"tie_checks": [fp32]})[0].endswith(
        "`k0` by the lower quartile: within 5%, so FP32 stays: a quantized model replaces it only "
        "where clearly faster."
    )
    faster = {**fp32, "lower_quartile_ratio": 0.985}
    assert _tie_lines({"tie_checks": [faster]})[0].endswith(
        "by the lower quartile: FP32 is no slower, so it stays."
    )


def test_a_card_that_ships_fp32_says_so_and_compares_it_with_the_baseline() -> None:
    from quantsweep.report.build import _baseline_lines, _recommended_line, _size_line  # noqa: PLC0415

    rec = {
        "recommended": "fp32",
        "objective": "speed",
        "runtime": "openvino",
        "speedup": 1.0,
        "latency_ms": 19.3,
        "fp32_latency_ms": 19.3,
        "map50_95": 0.9401,
        "size_bytes": 61_500_000,
        "size_reduction": 1.0,
        "baselines": [
            {"name": "ultralytics_int8", "ratio_to_fp32": 1.127, "map50_95": 0.9352, "meets_target": True}
        ],
    }
    assert _recommended_line(rec) == (
        "- Recommended: **`fp32`**, the float model itself: no quantized model is faster on openvino "
        "here (19.3 ms, median of one interleaved pass)."
    )
    assert _size_line(rec) == "- Size 61.5 MB, nothing quantized."
    assert _baseline_lines(rec) == [
        "- Baseline `ultralytics_int8`: mAP50-95 0.9352, 1.127x FP32 time (meets the target); "
        "the recommendation is 0.0049 more accurate and 1.13x as fast."
    ]


def test_the_openvino_deploy_line_asks_for_the_ir_only_for_a_quantized_model() -> None:
    backend = get_backend("openvino")
    assert backend.deploy_hint(Path("k0.xml")).endswith("; load the IR, not the .onnx")
    assert backend.deploy_hint(Path("fp32.onnx")).endswith("-d CPU -hint latency)")
