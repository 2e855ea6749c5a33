from __future__ import annotations

import pytest
import torch

from quantsweep.core.config import DetectConfig, HeadMode
from quantsweep.core.errors import InputError
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.evaluation.scoring import accuracy, detections_of, load_checked
from quantsweep.metrics.detections import decode, pseudo_labels
from quantsweep.onnx_graph.export import export_fp32
from quantsweep.targets import get_backend
from tests.conftest import TINY_IMGSZ, tiny_model


@pytest.mark.parametrize("head", [HeadMode.NMS, HeadMode.END2END])
def test_both_output_conventions_decode_like_torch(head, tiny_data, tmp_path) -> None:
    loaded = tiny_model("yolov10n.yaml", head=head)
    path = tmp_path / "m.onnx"
    export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=path)
    batch = load_batch(resolve_images(tiny_data), imgsz=TINY_IMGSZ)
    detector = load_checked(get_backend("ort-cpu"), path, imgsz=TINY_IMGSZ)
    onnx_dets = detections_of(detector, batch, DetectConfig())
    with torch.no_grad():
        torch_dets = decode(loaded.network.run(batch.images)[0], DetectConfig())
    assert len(onnx_dets) == len(batch.images)
    assert all(d.shape[1] == 6 for d in onnx_dets)
    n_onnx, n_torch = sum(len(d) for d in onnx_dets), sum(len(d) for d in torch_dets)
    assert n_torch > 0 and abs(n_onnx - n_torch) <= 0.01 * n_torch  # float noise at the threshold
    pseudo = pseudo_labels(torch_dets, DetectConfig())
    acc = accuracy(onnx_dets, batch=batch, pseudo=pseudo)
    assert acc.map50_95_vs_fp32 > 0.9 and acc.map50_95_gt is not None


@pytest.mark.parametrize("target", ["ort-cpu", "openvino"])
def test_input_size_and_missing_file_are_input_errors(target, tiny_onnx, tmp_path) -> None:
    backend = get_backend(target)
    runner = load_checked(backend, tiny_onnx["path"], imgsz=TINY_IMGSZ)
    assert runner(tiny_onnx["images"][:1].numpy()).shape[0] == 1
    with pytest.raises(InputError, match="takes 96x96 inputs"):
        load_checked(backend, tiny_onnx["path"], imgsz=128)
    with pytest.raises(InputError, match="not found"):
        load_checked(backend, tmp_path / "missing.onnx", imgsz=TINY_IMGSZ)
