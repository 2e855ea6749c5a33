"""Every stage through the CLI on a tiny model: sweep -> schemes -> materialize -> evaluate -> report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from quantsweep.cli.main import main
from quantsweep.export.onnx_model import export_fp32
from quantsweep.models.ultralytics_adapter import load_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chain(tiny_checkpoint, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    common = ["--imgsz", "96"]
    assert (
        main(
            [
                "sweep",
                "--model",
                str(tiny_checkpoint),
                "--images",
                str(tiny_data),
                "--max-images",
                "4",
                "--acts",
                "int8",
                *common,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = next(out.glob("*_layer_sensitivity/*/int4-int8/per_channel/layer-sensitivity-report.json"))
    assert (
        main(["schemes", "--report", str(report), "--ks", "0,3", "--target-bits", "5", "--out", str(out)])
        == 0
    )
    schemes = next(out.glob("*_schemes/*"))
    assert main(["materialize", "--schemes", str(schemes), "--out", str(out)]) == 0
    candidates = next(out.glob("*_candidates/*"))
    assert (
        main(
            [
                "evaluate",
                "--candidates",
                str(candidates),
                "--schemes",
                str(schemes),
                "--data",
                str(tiny_data),
                "--latency-runs",
                "3",
                "--max-evals",
                "6",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    eval_dir = next(out.glob("*_evaluate/*"))
    # a second evaluate run (no search) for the resume test to interrupt and continue
    args = ["evaluate", "--candidates", str(candidates), "--data", str(tiny_data), "--latency-runs", "1"]
    assert main([*args, "--out", str(out / "resumable")]) == 0
    resumable = next((out / "resumable").glob("*_evaluate/*"))
    return {
        "schemes": schemes,
        "candidates": candidates,
        "eval": eval_dir,
        "out": out,
        "resumable": resumable,
    }


def test_schemes_stage_files(chain) -> None:
    schemes = chain["schemes"]
    index = json.loads((schemes / "schemes_index.json").read_text())
    names = {row["name"] for row in index["schemes"]}
    assert {"k0", "k3", "random_k3", "first_head_k3", "budget_5bits"} <= names
    k3 = json.loads((schemes / "scheme_k3.json").read_text())
    assert k3["precision_counts"]["float"] == 3
    assert all(layer["onnx_node"] for layer in k3["layers"])
    excluded = (schemes / "nodes_to_exclude_k3.txt").read_text().split()
    assert len(excluded) == 3 and all(name.endswith("Conv") for name in excluded)
    assert "| rank | Torch layer | sensitivity | ONNX node |" in (schemes / "candidates.md").read_text()


def test_materialized_artifacts_match_their_schemes(chain) -> None:
    index = json.loads((chain["candidates"] / "candidates.json").read_text())
    by_name = {a["name"]: a for a in index["artifacts"]}
    assert {"fp32", "baseline_int8", "k0", "k3"} <= set(by_name)
    for name in ("k0", "k3", "random_k3", "budget_5bits"):
        assert by_name[name]["counts_match"] is True
        assert by_name[name]["torch_vs_onnx_rel_l2"] < 0.05
    verify = json.loads((chain["candidates"] / "k3.verify.json").read_text())
    layers = sum(verify["expected_counts"].values())
    assert verify["precision_counts"] == {"float": 3, "int4-int8": layers - 3}
    assert verify["checker"] == "passed" and verify["ort_providers"] == ["CPUExecutionProvider"]
    baseline = json.loads((chain["candidates"] / "baseline_int8.verify.json").read_text())
    assert baseline["precision_counts"] == {"int8-int8": layers}


def _expected_recommendation(results: dict, search: dict) -> str | None:
    """The smallest artifact within the search's target, computed here from the results."""
    metric = "map50_95_gt" if results["fp32"]["accuracy"]["map50_95_gt"] is not None else "map50_95_vs_fp32"
    fp32 = results["fp32"]["accuracy"][metric]
    allowed = fp32 * search["max_drop"] if search["drop_mode"] == "relative" else search["max_drop"]
    passing = [
        (r["size_bytes"] / 1e6, r.get("kept") or 0, name)
        for name, r in results.items()
        if name != "fp32" and fp32 - r["accuracy"][metric] <= allowed + 1e-12
    ]
    return min(passing)[2] if passing else None


def test_evaluation_search_and_report(chain) -> None:
    eval_dir = chain["eval"]
    results = {p.stem: json.loads(p.read_text()) for p in (eval_dir / "results").glob("*.json")}
    assert {"fp32", "k0", "k3", "recommended"} <= set(results)
    fp32 = results["fp32"]
    assert fp32["accuracy"]["map50_95_vs_fp32"] > 0.9 and fp32["latency"][0]["median_ms"] > 0
    search = json.loads((eval_dir / "search" / "search.json").read_text())
    assert 0 < len(search["evaluations"]) <= 6
    summary = (eval_dir / "summary.md").read_text()
    assert "| `fp32` | fp32 |" in summary
    expected = _expected_recommendation(results, search)
    assert expected is not None  # the tiny chain is set up so that some candidate passes
    assert f"**Recommendation: `{expected}`**" in summary
    for plot in ("map_vs_bits", "map_vs_latency", "sensitivity_heatmap", "sensitivity_int4-int8_per_channel"):
        assert (eval_dir / "plots" / f"{plot}.png").stat().st_size > 5000


@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="needs Debian's chromium (.ci/run installs it; CI never skips this)",
)
def test_report_html_renders_in_headless_chromium(chain, tmp_path) -> None:
    html = chain["eval"] / "report.html"
    dom = subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    plots = len(list((chain["eval"] / "plots").glob("*.png")))
    assert f'data-images-rendered="{plots}"' in dom
    assert "<table>" in dom and "<td>fp32</td>" in dom


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_bad_evaluation_inputs_exit_2(chain, tiny_data, tiny_checkpoint, tmp_path, capsys) -> None:
    before = _snapshot(chain["eval"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(["evaluate", "--candidates", str(empty), "--data", str(tiny_data), "--out", str(tmp_path)]) == 2
    )
    assert "not a candidates directory" in capsys.readouterr().err
    # labels for a 20-class dataset do not match an 8-class model
    bad = tmp_path / "bad"
    shutil.copytree(Path(tiny_data).parent, bad)
    for label in (bad / "labels" / "val").glob("*.txt"):
        label.write_text("19 0.5 0.5 0.2 0.2\n")
    args = ["evaluate", "--candidates", str(chain["candidates"]), "--out", str(tmp_path)]
    assert main([*args, "--data", str(bad / "images" / "val")]) == 2
    assert "labels do not match" in capsys.readouterr().err
    # a candidate exported at another input size (64 px) than the data is prepared at (96 px)
    other = tmp_path / "other"
    shutil.copytree(chain["candidates"], other)
    export_fp32(load_model(tiny_checkpoint).network, imgsz=64, path=other / "k0.onnx")
    assert (
        main(["evaluate", "--candidates", str(other), "--data", str(tiny_data), "--out", str(tmp_path)]) == 2
    )
    assert "k0.onnx takes 64x64 inputs, but the data is prepared at 96x96" in capsys.readouterr().err
    assert not list(tmp_path.glob("*_evaluate/*/results/k0.json"))
    assert _snapshot(chain["eval"]) == before  # nothing computed earlier was touched


def _evaluate_resume(chain, data: Path, *extra: str) -> int:
    args = ["evaluate", "--candidates", str(chain["candidates"]), "--data", str(data), "--latency-runs", "1"]
    return main([*args, "--resume", str(chain["resumable"]), "--out", str(chain["out"]), *extra])


def test_evaluate_resume_continues_and_refuses_other_inputs(chain, tiny_data, tmp_path, capsys) -> None:
    resumable = chain["resumable"]
    results = resumable / "results"
    kept = results / "k0.json"
    kept_bytes = kept.read_bytes()
    (results / "k3.json").unlink()  # as if interrupted before k3 was scored
    assert _evaluate_resume(chain, tiny_data) == 0
    assert (results / "k3.json").is_file() and kept.read_bytes() == kept_bytes  # only the missing one
    before = _snapshot(resumable)
    # the same images in another folder are another --data, even with the same content
    copy = tmp_path / "copy"
    shutil.copytree(Path(tiny_data).parent, copy)
    (copy / "data.yaml").write_text(
        (copy / "data.yaml").read_text().replace(str(Path(tiny_data).parent), str(copy))
    )
    assert _evaluate_resume(chain, copy / "data.yaml") == 2
    assert "was evaluated with a different --data: recorded" in capsys.readouterr().err
    assert _evaluate_resume(chain, tiny_data, "--eval-images", "4") == 2
    assert "different --eval-images: recorded 100, now 4" in capsys.readouterr().err
    # same path, changed content: one label file edited
    label = next((Path(tiny_data).parent / "labels" / "val").glob("*.txt"))
    original = label.read_text()
    try:
        label.write_text(original + "0 0.5 0.5 0.1 0.1\n")
        assert _evaluate_resume(chain, tiny_data) == 2
        assert "different evaluation data content" in capsys.readouterr().err
    finally:
        label.write_text(original)
    assert _snapshot(resumable) == before  # refused runs wrote nothing
