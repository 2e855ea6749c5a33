from __future__ import annotations

import pytest
import torch
from torch import nn

from quantsweep.core.config import HeadMode
from quantsweep.core.errors import InputError
from quantsweep.models import load_model
from quantsweep.models.network import cpu_layout, enumerate_layers
from tests.conftest import TINY_IMGSZ, tiny_model


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolov10n.yaml", "yolo11n.yaml"])
def test_resume_from_any_block_equals_full_run(name: str) -> None:
    network = tiny_model(name).network
    x = torch.rand(2, 3, TINY_IMGSZ, TINY_IMGSZ)
    with torch.no_grad():
        full, recorded = network.run(x, record=True)
        for start in range(1, len(network.blocks)):
            resumed = network.resume(start, recorded)
            assert torch.equal(resumed.raw, full.raw), f"block {start}"


def test_cpu_layout_runs_the_convs_channels_last_with_the_nchw_outputs() -> None:
    """The sweep's passes run channels-last; ``run`` itself leaves the layout alone (quantization)."""
    network = tiny_model("yolov10n.yaml").network
    x = torch.rand(2, 3, TINY_IMGSZ, TINY_IMGSZ)

    def run(images: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        layouts: list[bool] = []

        def hook(_layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            layouts.append(inputs[0].stride(1) == 1)  # channels innermost (a channel slice too)

        convs = [m for m in network.module.modules() if isinstance(m, nn.Conv2d)]
        handles = [conv.register_forward_pre_hook(hook) for conv in convs]
        try:
            with torch.no_grad():
                return network.run(images)[0].raw, layouts
        finally:
            for handle in handles:
                handle.remove()

    staged, layouts = run(cpu_layout(x))
    # all but those after a reshape (PSA's attention, the DFL): 3 of 83 here
    assert layouts.count(False) <= 3 < len(layouts), f"{layouts.count(False)} of {len(layouts)} read NCHW"
    nchw, nchw_layouts = run(x)
    assert not any(nchw_layouts)
    assert torch.allclose(staged, nchw, rtol=1e-4, atol=1e-5)


def test_enumerate_lists_every_executed_conv_with_macs() -> None:
    loaded = tiny_model("yolov8n.yaml")
    layers = enumerate_layers(loaded.network, torch.zeros(1, 3, TINY_IMGSZ, TINY_IMGSZ))
    convs = [n for n, m in loaded.network.module.named_modules() if isinstance(m, nn.Conv2d)]
    # v8 has no unused branch after fusing; C2f runs its bottlenecks before its own cv2
    assert sorted(layer.name for layer in layers) == sorted(convs)
    names = [layer.name for layer in layers]
    assert names.index("model.2.m.0.cv1.conv") < names.index("model.2.cv2.conv")
    assert [layer.exec_order for layer in layers] == list(range(len(layers)))
    first = layers[0]
    assert first.name == "model.0.conv" and first.block_index == 0
    out_hw = (TINY_IMGSZ // 2) ** 2
    assert first.macs == out_hw * first.weight_shape[0] * 3 * 3 * 3
    assert layers[-1].name == "model.22.dfl.conv"
    assert all(layer.block_index == int(layer.name.split(".")[1]) for layer in layers)


def test_no_batchnorm_left_after_loading() -> None:
    module = tiny_model("yolov10n.yaml").network.module
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_both_output_conventions_give_same_anchor_layout() -> None:
    e2e = tiny_model("yolov10n.yaml", head=HeadMode.END2END)
    nms = tiny_model("yolov10n.yaml", head=HeadMode.NMS)
    x = torch.rand(1, 3, TINY_IMGSZ, TINY_IMGSZ)
    with torch.no_grad():
        out_e2e, _ = e2e.network.run(x)
        out_nms, _ = nms.network.run(x)
    assert e2e.end_to_end and not nms.end_to_end
    assert out_e2e.detections is not None and out_e2e.detections.shape[-1] == 6
    assert out_nms.detections is None
    assert out_e2e.boxes.shape == out_nms.boxes.shape  # [N, A, 4] in both
    assert out_e2e.scores.shape[-1] == 8


@pytest.mark.slow
def test_testbed_has_118_convs_on_inference_path(testbed_checkpoint) -> None:
    loaded = load_model(testbed_checkpoint)
    layers = enumerate_layers(loaded.network, torch.zeros(1, 3, 320, 320))
    assert len(layers) == 118
    assert loaded.class_names[0] == "circle"


def test_missing_and_foreign_checkpoints_are_input_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(InputError, match="not an Ultralytics detection checkpoint"):
        load_model(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_model(garbage)


def test_end2end_on_a_head_without_one2one_branch_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no NMS-free"):
        load_model("yolov8n.yaml", num_classes=8, head=HeadMode.END2END)
