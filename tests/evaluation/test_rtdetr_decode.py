"""RT-DETR's output convention: Torch and ONNX Runtime decode to the same detections, in pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantsweep.core.config import DetectConfig
from quantsweep.evaluation.scoring import class_names, head_output, load_checked, output_convention
from quantsweep.metrics.detections import decode
from quantsweep.models.outputs import OutputConvention
from quantsweep.onnx_graph.export import export_fp32
from quantsweep.targets import get_backend
from tests.conftest import tiny_model

RTDETR_TINY = str(Path(__file__).resolve().parent.parent / "models" / "rtdetr-tiny.yaml")


def test_rtdetr_detections_agree_between_torch_and_onnx(tmp_path) -> None:
    loaded = tiny_model(RTDETR_TINY)
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch_out = loaded.network.run(images)[0]
    assert torch_out.boxes.shape == (2, 100, 4) and torch_out.scores.shape == (2, 100, 8)
    assert torch_out.raw.shape == (2, 12, 100)  # [N, 4+nc, Q] like a YOLO head
    path = tmp_path / "rtdetr.onnx"
    export_fp32(loaded.network, imgsz=96, path=path)
    detector = load_checked(get_backend("ort-cpu"), path, imgsz=96)
    assert output_convention(path) is OutputConvention.RTDETR
    assert class_names(path) == {i: str(i) for i in range(8)}
    settings = DetectConfig()
    from_torch = decode(torch_out, settings)
    from_onnx = decode(head_output(detector, images, convention=OutputConvention.RTDETR), settings)
    for a, b in zip(from_torch, from_onnx, strict=True):
        assert len(a) == len(b) > 10
        # boxes are corner pixels of the 96-px input (not normalised centre-size)
        assert a[:, :4].max() > 20 and (a[:, 2] >= a[:, 0]).all() and (a[:, 3] >= a[:, 1]).all()
        order_a, order_b = np.lexsort((a[:, 0], a[:, 5])), np.lexsort((b[:, 0], b[:, 5]))
        np.testing.assert_allclose(a[order_a], b[order_b], atol=1e-3)
    # the per-query boxes behind the top-k are the same boxes
    best = torch_out.detections[0, 0, :4]
    assert torch.isclose(torch_out.boxes[0], best).all(dim=1).any()
