"""Every stage through the CLI on a tiny model: sweep -> schemes -> materialize -> evaluate -> report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
import torch

from quantsweep.cli.main import main
from quantsweep.evaluation.search_moves import MoveKind, island_label, read_moves
from quantsweep.models import load_model
from quantsweep.onnx_graph.export import export_fp32
from quantsweep.stages.kept_sets import kept_set_writer
from quantsweep.stages.materialize_stage import MaterializeRequest, materialize_candidates
from quantsweep.targets import get_backend
from quantsweep.targets.base import onnx_source
from tests.conftest import CPU_INT8, without_faster_in_float

pytestmark = pytest.mark.slow  # every stage through the CLI, Ultralytics exports included: minutes
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def chain(tiny_checkpoint, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    _ok(
        [
            "sweep",
            *("--model", str(tiny_checkpoint), "--images", str(tiny_data), "--max-images", "4"),
            *("--target", "ort-cpu,openvino,size", "--method", "fast", "--imgsz", "96", "--out", str(out)),
            *("--recovery-steps", "20"),  # the search distills: 20 steps show its moves, 200 add 25 s
        ]
    )
    reports = sorted(out.glob("*_layer_sensitivity/*/*/per_channel/layer-sensitivity-report.json"))
    assert [r.parent.parent.name for r in reports] == ["int4-fp16", f"{CPU_INT8}-int8"]
    for report in reports:
        budget = ["--target-bits", "5"] if "int4" in str(report) else []
        _ok(["schemes", "--report", str(report), "--ks", "0,3", *budget, "--out", str(out)])
    schemes = sorted(out.glob("*_schemes/*"))
    _ok(["materialize", *[a for s in schemes for a in ("--schemes", str(s))], "--out", str(out)])
    candidates = next(out.glob("*_candidates/*"))
    evaluate = [
        *("evaluate", "--candidates", str(candidates), "--data", str(tiny_data), "--eval-images", "8"),
        *("--latency-rounds", "2", "--latency-runs", "2", "--max-evals", "4", "--out", str(out)),
    ]
    _ok([*evaluate, "--search"])
    return {
        "schemes": schemes,
        "candidates": candidates,
        "eval": next(out.glob("*_evaluate/*")),
        "out": out,
        "evaluate": evaluate,
    }


def test_schemes_stage_files(chain) -> None:
    int4 = next(s for s in chain["schemes"] if "int4" in (s / "candidates.md").read_text())
    index = json.loads((int4 / "schemes_index.json").read_text())
    names = {row["name"] for row in index["schemes"]}
    assert {"k0", "k3", "random_k3", "first_head_k3", "budget_5bits"} <= names
    k3 = json.loads((int4 / "scheme_k3.json").read_text())
    assert k3["precision_counts"]["float"] == 3
    assert all(layer["onnx_node"] for layer in k3["layers"])
    excluded = (int4 / "nodes_to_exclude_k3.txt").read_text().split()
    assert len(excluded) == 3 and all(name.endswith("Conv") for name in excluded)
    assert "| rank | Torch layer | sensitivity | ONNX node |" in (int4 / "candidates.md").read_text()


def test_each_target_gets_its_artifacts_in_its_own_placement(chain) -> None:
    index = json.loads((chain["candidates"] / "candidates.json").read_text())
    # tensorrt artifacts are written and checked on any machine; only its engines need a GPU. litert
    # runs full-range INT8 only: it takes the INT8 schemes where the CPU targets sweep them, and is
    # left out (not an error) where its extra is not installed
    litert = {"litert"} if get_backend("litert").writable().available and CPU_INT8 == "int8" else set()
    assert set(index["targets"]) == {"ort-cpu", "openvino", "size", "tensorrt"} | litert
    written = {
        "ort-cpu": f"{CPU_INT8}-uint8",
        "openvino": f"{CPU_INT8}-uint8",
        "size": "int4-fp16",
        "tensorrt": f"{CPU_INT8}-int8",
    }
    for target, label in written.items():
        by_name = {a["name"]: a for a in index["targets"][target]["artifacts"]}
        assert {"fp32", "k0", "k3", "random_k3"} <= set(by_name)
        assert all(by_name[n]["counts_match"] is True for n in ("k0", "k3", "random_k3"))
        verify = json.loads((chain["candidates"] / target / "k3.verify.json").read_text())
        layers = sum(verify["expected_counts"].values())
        assert verify["precision_counts"] == {"float": 3, label: layers - 3}
        assert verify["checker"] == "passed"
    size_k3 = json.loads((chain["candidates"] / "size" / "k3.verify.json").read_text())
    assert size_k3["torch_vs_onnx_rel_l2"] < 1e-5  # weight-only: float precision
    # Ultralytics' own one-line INT8 export of the same checkpoint, as each runtime's baseline
    for target, suffix in (("ort-cpu", ".onnx"), ("openvino", ".xml")):
        by_name = {a["name"]: a for a in index["targets"][target]["artifacts"]}
        baseline = by_name["ultralytics_int8"]
        assert baseline["policy"] == "baseline" and baseline["file"].endswith(suffix)
        assert (chain["candidates"] / baseline["file"]).is_file()
        # what the exporter printed goes beside it, off the terminal (tests/targets/test_export_log.py)
        assert (chain["candidates"] / target / "ultralytics_int8.export.log").is_file()
    assert "ultralytics_int8" not in {a["name"] for a in index["targets"]["size"]["artifacts"]}


def test_a_kept_set_written_for_a_benchmark_is_the_scheme_materialize_wrote(chain, tmp_path) -> None:
    int8 = next(s for s in chain["schemes"] if "int4" not in (s / "candidates.md").read_text())
    kept = tuple(json.loads((int8 / "scheme_k3.json").read_text())["kept_layers"])
    for target in ("ort-cpu", "openvino"):
        write = kept_set_writer(get_backend(target), candidates_dir=chain["candidates"], schemes_dir=int8)
        write(kept, tmp_path / f"{target}.onnx")
        written = onnx.load(str(tmp_path / f"{target}.onnx")).graph
        materialized = onnx.load(str(chain["candidates"] / target / "k3.onnx")).graph
        assert written.SerializeToString() == materialized.SerializeToString(), target


def test_a_run_defers_schemes_until_evaluate_needs_them(chain, tiny_data, tmp_path, monkeypatch) -> None:
    # Ultralytics' exports are the chain's to check (above); without them this materialize takes
    # half the time, and nothing here reads them
    for target in ("ort-cpu", "openvino"):
        monkeypatch.setattr(type(get_backend(target)), "baselines", lambda self: {})
    request = MaterializeRequest(tuple(chain["schemes"]), ("ort-cpu", "openvino", "size"), defer_top_k=True)
    candidates = materialize_candidates(request, out=tmp_path)
    index = json.loads((candidates / "candidates.json").read_text())["targets"]
    for target in ("ort-cpu", "openvino"):
        by_name = {a["name"]: a for a in index[target]["artifacts"]}
        assert by_name["k3"]["deferred"] and not (candidates / by_name["k3"]["file"]).exists()
        assert not by_name["k0"]["deferred"] and (candidates / by_name["k0"]["file"]).is_file()
        assert not by_name["random_k3"]["deferred"]  # a reference scheme is written as before
    # a size target defers its bit-budget scheme with the size its file will have (sizes decide
    # what is scored); K=3 is compared with the references at K=3, so it is written as they are
    size = {a["name"]: a for a in index["size"]["artifacts"]}
    assert [n for n, a in size.items() if a["deferred"]] == ["budget_5bits"]
    assert not (candidates / size["budget_5bits"]["file"]).exists()
    assert size["budget_5bits"]["size_bytes"] > size["k0"]["size_bytes"]
    # a target nothing kept misses (FP32's own score, to the ten-thousandth): k3 is needed, so the
    # evaluate stage writes it, checked as materialize checks its own, and scores it
    evaluate = ["evaluate", "--candidates", str(candidates), "--data", str(tiny_data), "--max-drop", "0.0001"]
    timing = ["--latency-rounds", "2", "--latency-runs", "2"]
    _ok([*evaluate, "--eval-images", "8", *timing, "--out", str(tmp_path)])
    eval_dir = next(tmp_path.glob("*_evaluate/*"))
    for target in ("ort-cpu", "openvino"):
        record = json.loads((eval_dir / "results" / target / "models" / "k3.json").read_text())
        path = Path(record["file"])
        assert path.parent == eval_dir / "deferred" / target and not record["deferred"]
        verify = json.loads(onnx_source(path).with_suffix(".verify.json").read_text())
        assert verify["counts_match"] is True and record["counts_match"] is True
        assert record["runtime_summary"] == verify["runtime_summary"]
        assert "agrees" in record["runtime_summary"]
        written = onnx.load(str(onnx_source(path))).graph
        materialized = onnx.load(str(chain["candidates"] / target / "k3.onnx")).graph
        assert written.SerializeToString() == materialized.SerializeToString(), target
    # nothing meets so tight a target on INT4 either: the budget scheme is written now, at the size
    # materialize recorded for it, and is the file materialize itself writes
    record = json.loads((eval_dir / "results" / "size" / "models" / "budget_5bits.json").read_text())
    assert Path(record["file"]).parent == eval_dir / "deferred" / "size"
    assert record["size_bytes"] == size["budget_5bits"]["size_bytes"] == Path(record["file"]).stat().st_size
    materialized = onnx.load(str(chain["candidates"] / "size" / "budget_5bits.onnx")).graph
    assert onnx.load(record["file"]).graph.SerializeToString() == materialized.SerializeToString()


def _check_islands(chain, target: str, search: dict) -> None:
    """Islands are priced on a speed target's runtime (island_costs.py): the free island is tried
    whether nothing-kept misses the target or meets it."""
    eval_dir = chain["eval"]
    islands, costs_file = search["islands"], eval_dir / "search" / target / "island_costs.json"
    priced = target != "size"
    assert costs_file.is_file() == priced and islands["order"] == ("gain-per-ms" if priced else "rank")
    if priced:
        assert set(islands["kept_cost_ms"]) == set(search["kept"])
        costs = json.loads(costs_file.read_text())
        fp32 = onnx.load(str(chain["candidates"] / "fp32.onnx"))
        convs = sum(node.op_type == "Conv" for node in fp32.graph.node)
        assert len(costs["float_ms"]) == len(costs["int8_ms"]) == convs
        assert all(ms > 0 for ms in costs["int8_ms"].values())
        if search["kept"]:  # the report card says how the kept islands were chosen and what they cost
            card = (eval_dir / "summary.md").read_text().split(f"\n## {target}\n")[1].split("\n## ")[0]
            assert f"by sensitivity per millisecond they cost on {costs['runtime']}" in card


def _spared_by_free_island(search: dict) -> bool:
    """Whether a free island met the target alone: accurate enough, and timed whole within 2% of
    nothing kept (the profile that priced it cannot see its borders)."""
    tried, nothing_kept = search["islands"]["free_tried"], search["evaluations"][0]["score"]
    if tried and nothing_kept >= search["threshold"]:
        # nothing kept meets the target: one free island, a finalist if more accurate, timed by the
        # evaluate stage's pass beside nothing kept (no timing pass of its own)
        (free,) = tried
        assert free["met"] == (free["score"] > nothing_kept)
        assert free["x_nothing_kept"] is None
        if free["met"]:
            assert any(m["label"] == free["layer"] and m["finalist"] for m in search["moves"])
        return False
    for free in tried:
        if free["score"] >= search["threshold"]:
            assert free["met"] == (free["x_nothing_kept"] <= 1.02), free
    assert not any(f["met"] for f in tried[:-1]), "the search stops at the first free island taken"
    spared = bool(tried) and tried[-1]["met"]
    if spared:  # the island taken is timed beside what the island search finds
        assert any(m["label"] == tried[-1]["layer"] and m["finalist"] for m in search["moves"])
    return spared


def _check_moves(search: dict) -> None:
    """The search's ledger (search_moves.py) holds every move it made, in order, as measured."""
    expected = []
    for free in search["islands"]["free_tried"]:
        expected.append((MoveKind.ISLAND, free["layer"], free["score"]))
    if search["recovery"] is not None:
        expected.append((MoveKind.RECOVERY, search["recovery"]["method"], search["recovery"]["k0_after"]))
    if search["kept"] and search["target_met"]:
        expected.append((MoveKind.ISLAND, island_label(search["kept"]), search["score"]))
    moves = without_faster_in_float(read_moves(search["moves"]))
    assert [(m.kind, m.label, m.score) for m in moves] == expected
    assert all(m.finalist in search["finalists"] for m in moves if m.finalist)


def _check_finalists_verified(target: str, search: dict, models: dict) -> None:
    """The search's finalists are checked on their runtime as materialize checks its artifacts."""
    for name in [n for n in search["finalists"] if models[n]["policy"] == "search"]:
        verify = json.loads(onnx_source(Path(models[name]["file"])).with_suffix(".verify.json").read_text())
        assert models[name]["runtime_summary"] == verify["runtime_summary"], (target, name)
        assert models[name]["runtime_agrees"] is not None and models[name]["counts_match"] is True


def test_evaluation_search_timing_and_recommendation_per_target(chain) -> None:
    eval_dir = chain["eval"]
    for target in ("ort-cpu", "openvino", "size"):
        models = {
            p.stem: json.loads(p.read_text()) for p in (eval_dir / "results" / target / "models").glob("*")
        }
        assert {"fp32", "k0", "k3"} <= set(models)
        assert models["fp32"]["latency"]["ratio_to_reference"] == 1.0
        rec = json.loads((eval_dir / "results" / target / "recommendation.json").read_text())
        # a size target is chosen by size: only FP32 and its choice are timed
        timed = set(models) if target != "size" else {"fp32", rec["recommended"] or "fp32"}
        assert {n for n, m in models.items() if m.get("latency")} == timed
        assert all(
            models[n]["latency"]["median_ms"] > 0 and models[n]["latency"]["rounds"] == 2 for n in timed
        )
        assert rec["objective"] == ("size" if target == "size" else "speed")
        # a random tiny model may have no quantized model within 1%: then the closest is named
        ours = {n: m for n, m in models.items() if n != "fp32" and m["policy"] != "baseline"}
        if rec["recommended"] not in (None, "fp32"):
            assert ours[rec["recommended"]]["score"] >= rec["threshold"]
        elif rec["recommended"] is None:
            assert all(m["score"] < rec["threshold"] for m in ours.values())
            assert rec["closest"] == max(ours, key=lambda n: ours[n]["score"])
        search = json.loads((eval_dir / "search" / target / "search.json").read_text())
        assert 0 < len(search["evaluations"]) <= 4
        # recovery before islands (--recovery auto, the default): on a speed target whose nothing-kept
        # misses, and nowhere else; it starts from the k0 candidate's own score
        recovery, nothing_kept = search["recovery"], models["k0"]["score"]
        missed = nothing_kept < search["threshold"]
        # ... unless an island the runtime prices at nothing met the target alone (one evaluation)
        spared = _spared_by_free_island(search)
        _check_moves(search)
        assert (recovery is not None) == (missed and target != "size" and not spared), (target, recovery)
        if recovery is not None:
            assert recovery["method"] == "distill" and recovery["k0_before"] == nothing_kept
            recovered_log = (eval_dir / "search" / target / "evaluations_recovered.jsonl").read_text()
            assert json.loads(recovered_log.splitlines()[0])["score"] == recovery["k0_after"]
            if recovery["used"]:  # the islands then start from the recovered nothing-kept
                nothing_kept = recovery["k0_after"]
                assert all("_recovered" in name for name in search["finalists"])
        # nothing kept is the k0 candidate, already scored: the search reads its score, scores no copy
        assert search["evaluations"][0]["kept"] == [] and search["evaluations"][0]["score"] == nothing_kept
        if recovery is None or not recovery["used"]:
            log = (eval_dir / "search" / target / "evaluations.jsonl").read_text().splitlines()
            assert [] not in [json.loads(line)["kept"] for line in log if line.strip()]
        _check_islands(chain, target, search)
        # the passing kept sets the search found are timed beside the candidates
        assert set(search["finalists"]) <= set(models) and bool(search["finalists"]) == search["target_met"]
        _check_finalists_verified(target, search, models)
    _check_report(eval_dir)


def _check_report(eval_dir: Path) -> None:
    """Unavailable targets said, every target's card, the baselines scored, timed and listed."""
    if not torch.cuda.is_available():
        unavailable = json.loads((eval_dir / "results" / "tensorrt" / "unavailable.json").read_text())
        assert "no CUDA GPU" in unavailable["reason"]
    summary = (eval_dir / "summary.md").read_text()
    assert summary.index("## Recommendations") < summary.index("\n## ort-cpu")
    for target in ("ort-cpu", "openvino", "size"):
        assert f"### {target}" in summary and f"map_vs_latency_{target}.png" in summary
    for target in ("ort-cpu", "openvino"):
        # the baseline is scored and timed in the same passes, reported, and never recommended
        base = json.loads((eval_dir / "results" / target / "models" / "ultralytics_int8.json").read_text())
        assert base["latency"]["median_ms"] > 0 and base["accuracy"]["map50_95_vs_fp32"] >= 0
        rec = json.loads((eval_dir / "results" / target / "recommendation.json").read_text())
        assert rec["recommended"] != "ultralytics_int8"
        (listed,) = rec["baselines"]
        assert listed["name"] == "ultralytics_int8" and listed["map50_95"] == base["score"]
        card = summary[summary.index(f"### {target}") :]
        assert "- Baseline `ultralytics_int8`: mAP50-95" in card.split("\n### ")[0]
    for plot in ("map_vs_bits_size", "sensitivity_heatmap", f"sensitivity_{CPU_INT8}-int8_per_channel"):
        assert (eval_dir / "plots" / f"{plot}.png").stat().st_size > 5000


def test_evaluate_resume_refuses_other_data_and_finishes_the_same(chain, tiny_data, tmp_path, capsys) -> None:
    eval_dir = chain["eval"]
    result = eval_dir / "results" / "size" / "models" / "k0.json"
    before = result.stat().st_mtime_ns
    other = tmp_path / "other"
    shutil.copytree(Path(tiny_data).parent, other)
    argv = [a if a != str(tiny_data) else str(other / "data.yaml") for a in chain["evaluate"]]
    assert main([*argv, "--resume", str(eval_dir)]) == 2
    err = capsys.readouterr().err
    assert "was evaluated with a different --data" in err and len(err.strip().splitlines()) == 1
    assert main([*chain["evaluate"], "--eval-images", "4", "--resume", str(eval_dir)]) == 2
    assert "different --eval-images: recorded 8, now 4" in capsys.readouterr().err
    assert main([*chain["evaluate"], "--latency-rounds", "3", "--resume", str(eval_dir)]) == 2
    assert "latency differs from the interrupted run" in capsys.readouterr().err
    # same path, changed content: one label file edited
    label = next((Path(tiny_data).parent / "labels" / "val").glob("*.txt"))
    original = label.read_text()
    try:
        label.write_text(original + "0 0.5 0.5 0.1 0.1\n")
        assert main([*chain["evaluate"], "--resume", str(eval_dir)]) == 2
        assert "different evaluation data content" in capsys.readouterr().err
    finally:
        label.write_text(original)
    # the same settings resume without scoring anything again
    result_k3 = eval_dir / "results" / "ort-cpu" / "models" / "k3.json"
    result_k3.unlink()
    _ok([*chain["evaluate"], "--resume", str(eval_dir)])
    assert result.stat().st_mtime_ns == before and result_k3.is_file()


def test_materialize_refuses_a_target_that_cannot_run_the_schemes(chain, tmp_path, capsys) -> None:
    int4 = next(s for s in chain["schemes"] if "int4" in (s / "candidates.md").read_text())
    argv = ["materialize", "--schemes", str(int4), "--target", "ort-cpu", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target ort-cpu runs int7-int8, int7-uint8, int8-int8, int8-uint8 only" in err[0]
    assert not list(tmp_path.glob("*_candidates"))


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
    targets = json.loads((chain["eval"] / "eval_config.json").read_text())["targets"]
    candidates = json.loads((chain["candidates"] / "candidates.json").read_text())["targets"]
    # every target with candidates has a card (tensorrt's says why it is not available here)
    assert set(targets) == set(candidates) >= {"ort-cpu", "openvino", "size", "tensorrt"}
    assert f'data-images-rendered="{plots}"' in dom and f'data-cards="{len(targets)}"' in dom
    assert "<table>" in dom and "<code>fp32</code>" in dom


def test_bad_evaluation_inputs_exit_2(chain, tiny_checkpoint, tiny_data, tmp_path, capsys) -> None:
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
    # a candidate exported at another input size than the data is prepared at
    other = tmp_path / "other"
    shutil.copytree(chain["candidates"], other)
    loaded = load_model(str(tiny_checkpoint))
    export_fp32(loaded.network, imgsz=128, path=other / "size" / "k0.onnx")
    args = ["evaluate", "--candidates", str(other), "--data", str(tiny_data), "--target", "size"]
    assert main([*args, "--out", str(tmp_path / "runs")]) == 2
    assert "k0.onnx takes 128x128 inputs" in capsys.readouterr().err
    # what finished before the bad artifact is kept, ready for --resume
    (failed,) = (tmp_path / "runs").glob("*_evaluate/*")
    assert (failed / "results" / "size" / "models" / "fp32.json").is_file()


def test_fp32_is_scored_once_for_the_targets_that_run_it_alike(
    chain, tiny_data, tmp_path, monkeypatch
) -> None:
    from quantsweep.stages import eval_context  # noqa: PLC0415

    scored: list[tuple[str, str]] = []
    original = eval_context.EvalContext.score

    def counting(self, backend, path):
        scored.append((backend.name, Path(path).name))
        return original(self, backend, path)

    monkeypatch.setattr(eval_context.EvalContext, "score", counting)
    argv = [a if a != str(chain["out"]) else str(tmp_path) for a in chain["evaluate"]]
    _ok([*argv, "--target", "ort-cpu,openvino,size"])
    # the reference run (ONNX Runtime, CPU, f32) is ort-cpu's and size's FP32: neither scores it again
    assert ("ort-cpu", "fp32.onnx") not in scored and ("size", "fp32.onnx") not in scored
    assert ("openvino", "fp32.onnx") in scored  # another runtime runs it its own way
    run = next(tmp_path.glob("*_evaluate/*"))
    fp32 = [
        json.loads((run / "results" / t / "models" / "fp32.json").read_text()) for t in ("ort-cpu", "size")
    ]
    assert fp32[0]["accuracy"] == fp32[1]["accuracy"] and fp32[0]["score"] == fp32[1]["score"]
