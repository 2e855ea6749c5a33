"""Integration: the README's main command on the bundled YOLOv10m testbed (about 2 minutes on 2 cores)."""

from __future__ import annotations

import json

from quantsweep.cli.main import main


def test_default_run_ranks_118_convs_and_top10_recovers_int4(tmp_path, capsys) -> None:
    assert main(["run", "--out", str(tmp_path)]) == 0
    assert "summary.md" in capsys.readouterr().out
    (run_dir,) = list(tmp_path.glob("yolov10m-shapes_run/*"))
    check = json.loads((run_dir / "topk_check.json").read_text())
    rows = {row["scheme"]: row for row in check["rows"]}
    report_path = next(
        run_dir.glob("*_layer_sensitivity/*/int4-fp16/per_channel/layer-sensitivity-report.json")
    )
    report = json.loads(report_path.read_text())

    assert len(report["layers"]) == 118 and not report["not_measured"]
    assert report["images"] == 16 and report["imgsz"] == 320
    fp32 = rows["FP32"]["map50_95"]
    assert 0.93 <= fp32 <= 0.95  # testbed README: 0.942 with Ultralytics' val (352 px rect letterbox)
    assert rows["top-0 kept"]["map50_95"] < 0.6  # uniform INT4 collapses (testbed: 0.519)
    top10 = rows["top-10 kept"]
    assert top10["kept"] == 10 and top10["kept_layers"] == report["top_layers"][:10]
    assert top10["map50_95"] >= 0.933  # the bar: 99% of FP32 0.942
    # the ranking must put the layers that matter first: DFL, first conv and head box outputs
    assert {"model.23.dfl.conv", "model.0.conv", "model.23.cv2.0.2"} <= set(report["top_layers"][:5])
