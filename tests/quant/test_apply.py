from __future__ import annotations

import torch
from torch import nn

from quantsweep.core.config import ActDtype, CalibConfig, CalibMethod, Granularity, QuantFormat, WeightDtype
from quantsweep.models.network import enumerate_layers
from quantsweep.quant.apply import calibrate_inputs, quantized_layers
from tests.conftest import TINY_IMGSZ, tiny_model

INT4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)


def _record_layer_outputs(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: outputs.setdefault(n, o.clone()))
        for n, m in module.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return outputs


def test_quantizing_one_layer_changes_nothing_upstream() -> None:
    loaded = tiny_model("yolov8n.yaml")
    x = torch.rand(2, 3, TINY_IMGSZ, TINY_IMGSZ)
    layers = enumerate_layers(loaded.network, x)
    target = layers[len(layers) // 2]
    reference = _record_layer_outputs(loaded.network.module, x)
    with quantized_layers(loaded.network.module, {target.name: INT4}):
        quantized = _record_layer_outputs(loaded.network.module, x)
    for layer in layers:
        same = torch.equal(quantized[layer.name], reference[layer.name])
        if layer.exec_order < target.exec_order:
            assert same, f"{layer.name} runs before {target.name} but changed"
    assert not torch.equal(quantized[target.name], reference[target.name])


def test_weights_are_restored_exactly() -> None:
    module = tiny_model("yolov8n.yaml").network.module
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    with quantized_layers(module, dict.fromkeys(names, INT4)):
        assert not torch.equal(module.get_submodule(names[0]).weight, before[names[0] + ".weight"])
    for n, p in module.named_parameters():
        assert torch.equal(p, before[n])


def test_calibration_max_and_percentile() -> None:
    loaded = tiny_model("yolov8n.yaml")
    x = torch.rand(4, 3, TINY_IMGSZ, TINY_IMGSZ)

    def batches():
        with torch.no_grad():
            for chunk in x.split(2):
                loaded.network.run(chunk)
                yield None

    names = ["model.0.conv", "model.1.conv"]
    amax = calibrate_inputs(
        loaded.network.module, names, batches(), calib=CalibConfig(method=CalibMethod.MAX)
    )
    assert amax["model.0.conv"].amax == float(x.abs().max())
    assert amax["model.0.conv"].lo == float(x.min()) and amax["model.0.conv"].hi == float(x.max())
    pct = calibrate_inputs(
        loaded.network.module,
        names,
        batches(),
        calib=CalibConfig(method=CalibMethod.PERCENTILE, percentile=50.0),
    )
    assert 0 < pct["model.1.conv"].amax < amax["model.1.conv"].amax
