from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from quantsweep.cli.main import main
from quantsweep.core.records import JsonLines
from tests.conftest import TINY_IMGSZ, cli_process, kill_after_layers

SWEEP = ["sweep", "--imgsz", str(TINY_IMGSZ), "--max-images", "6"]


def _run_dir(out: Path) -> Path:
    (run,) = list(out.glob("*_layer_sensitivity/*"))
    return run


def _report(run: Path, combination: str = "int4-fp16/per_channel") -> dict:
    return json.loads((run / combination / "layer-sensitivity-report.json").read_text())


def _ranking(report: dict) -> list[tuple]:
    return [
        (r["name"], r["metrics"]["nmse"], r["metrics"]["box_error"], r["metrics"]["map_drop_vs_fp32"])
        for r in report["layers"]
    ]


def test_layer_glob_and_top_k_and_run_records(tiny_data, tiny_checkpoint, tmp_path) -> None:
    assert (
        main(
            [
                *SWEEP,
                "--model",
                str(tiny_checkpoint),
                "--images",
                str(tiny_data),
                "--layers",
                "model.22.*",
                "--top-k",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    run = _run_dir(tmp_path)
    report = _report(run)
    assert report["layers"] and all(r["name"].startswith("model.22.") for r in report["layers"])
    assert len(report["top_layers"]) == 3
    assert (run / "int4-fp16/per_channel/layer-sensitivity-report.md").read_text().count("| `model.22.") == 3
    for name in (
        "config.json",
        "inputs.json",
        "environment.json",
        "sweep_index.json",
        "sweep_index.csv",
        "failures.json",
    ):
        assert (run / name).is_file(), name
    assert json.loads((run / "environment.json").read_text())["packages"]["torch"]
    assert len(json.loads((run / "inputs.json").read_text())["images"]) == 6


def test_skipped_combination_is_recorded_with_reason(tiny_data, tiny_checkpoint, tmp_path) -> None:
    assert (
        main(
            [
                *SWEEP,
                "--model",
                str(tiny_checkpoint),
                "--images",
                str(tiny_data),
                "--weights",
                "fp8,int8",
                "--acts",
                "int8",
                "--layers",
                "model.0.*",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    run = _run_dir(tmp_path)
    failures = json.loads((run / "failures.json").read_text())["failures"]
    assert [(f["combination"], f["status"]) for f in failures] == [("fp8-int8/per_channel", "skipped")]
    assert "FP8 weights with INT8 activations" in failures[0]["reason"]
    rows = {r["combination"]: r for r in json.loads((run / "sweep_index.json").read_text())["combinations"]}
    assert rows["fp8-int8/per_channel"]["status"] == "skipped"
    assert rows["int8-int8/per_channel"]["status"] == "ok"
    assert (run / "act_ranges.json").is_file()


def _cli(args: list[str]) -> subprocess.Popen:
    # Every run of this test is a fresh process with the same environment, so thread counts match;
    # one thread each, so that two sweeps side by side do not oversubscribe two cores.
    return cli_process(args, OMP_NUM_THREADS="1")


@pytest.mark.slow  # a sweep killed and resumed in subprocesses
def test_killed_sweep_resumes_to_the_same_report(tiny_data, tiny_checkpoint, tmp_path) -> None:
    args = [
        *SWEEP,
        "--model",
        str(tiny_checkpoint),
        "--images",
        str(tiny_data),
        "--weights",
        "int4,int8",
        "--imgsz",
        str(TINY_IMGSZ),
        *("--layers", "model.[0-9].*"),  # the backbone's 27 convs: the resume is what is tested
    ]
    # the uninterrupted sweep runs beside the one that is killed (their startups overlap)
    whole_proc = _cli([*args, "--out", str(tmp_path / "whole")])
    proc = _cli([*args, "--out", str(tmp_path / "cut")])
    pattern = "*_layer_sensitivity/*/int4-fp16/per_channel/layer_results.jsonl"
    try:
        results = kill_after_layers(proc, tmp_path / "cut", pattern, layers=5, timeout=300)
    except BaseException:
        whole_proc.kill()  # a failed test leaves no sweep behind to slow the ones after it
        raise
    cut = _run_dir(tmp_path / "cut")
    assert whole_proc.wait() == 0, whole_proc.stderr.read().decode()[-2000:]
    whole = _run_dir(tmp_path / "whole")
    assert not (cut / "int8-fp16/per_channel/layer-sensitivity-report.json").exists()
    done_before = JsonLines(results).read()
    resumed = _cli(["sweep", "--resume", str(cut)])
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    lines = JsonLines(results).read()
    assert lines[: len(done_before)] == done_before  # finished work kept as it was
    assert len(lines) == len({r["name"] for r in lines}) > len(done_before)  # nothing measured twice
    for combination in ("int4-fp16/per_channel", "int8-fp16/per_channel"):
        assert _ranking(_report(cut, combination)) == _ranking(_report(whole, combination))


def test_ranking_uses_the_first_images_and_calibration_all(tiny_data, tiny_checkpoint, tmp_path) -> None:
    """--rank-images bounds what the per-layer measurements cost; the ranges still see every image."""
    runs = {}
    for rank in ("2", "6"):
        out = tmp_path / rank
        args = [*SWEEP, "--model", str(tiny_checkpoint), "--images", str(tiny_data), "--out", str(out)]
        args += ["--layers", "model.2*", "--weights", "int8", "--acts", "int8", "--rank-images", rank]
        assert main(args) == 0
        runs[rank] = _run_dir(out)
    reports = {rank: _report(run, "int8-int8/per_channel") for rank, run in runs.items()}
    assert reports["2"]["images"] == reports["6"]["images"] == 6
    assert (reports["2"]["ranked_on_images"], reports["6"]["ranked_on_images"]) == (2, 6)
    ranges = {rank: (run / "act_ranges.json").read_text() for rank, run in runs.items()}
    assert ranges["2"] == ranges["6"]  # calibrated on all six in both
    assert _ranking(reports["2"]) != _ranking(reports["6"])  # measured on two images, not six
