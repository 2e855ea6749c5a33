from __future__ import annotations

import pytest
import torch

from quantsweep.core.config import ActDtype, DetectConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.models.network import enumerate_layers
from quantsweep.sensitivity.engine import ExactSweep
from tests.conftest import TINY_IMGSZ, tiny_model

INT4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)


def _engine(tiny_data, name: str = "yolov8n.yaml"):
    loaded = tiny_model(name)
    batch = load_batch(resolve_images(tiny_data), imgsz=TINY_IMGSZ)
    layers = enumerate_layers(loaded.network, batch.images[:1])
    return ExactSweep(loaded.network, batch, batch_size=3, detect=DetectConfig()), layers


@pytest.mark.slow  # one run per block
def test_disabled_quantization_reproduces_fp32_exactly_from_every_block(tiny_data) -> None:
    engine, layers = _engine(tiny_data)
    reference = engine.reference.output
    with torch.no_grad():
        full = torch.cat([engine.network.run(c)[0].raw for c in engine.chunks])
    assert torch.equal(full, reference.raw)
    for block in sorted({layer.block_index for layer in layers} - {0}):
        output = engine.run_quantized({}, start_block=block)
        assert torch.equal(output.raw, reference.raw), f"block {block}"
        result = engine.score("none", output, started=0.0)
        assert result.nmse == 0.0 and result.box_error == 0.0 and result.map_drop_vs_fp32 == 0.0


def test_measuring_a_layer_equals_quantizing_it_in_a_full_run(tiny_data) -> None:
    engine, layers = _engine(tiny_data, "yolov10n.yaml")
    layer = next(layer for layer in layers if layer.name.endswith(".cv2.0.2"))  # a box-regression output
    result = engine.measure(layer, INT4)
    full = engine.run_quantized({layer.name: INT4}, start_block=0)
    again = engine.score(layer.name, full, started=0.0)
    assert result.nmse > 0 and result.sqnr_db < 100 and result.box_error > 0.01
    assert abs(result.nmse - again.nmse) <= 1e-6 * again.nmse
    assert abs(result.box_error - again.box_error) <= 1e-6 * again.box_error
    assert result.map50_95_gt is not None  # labels were given
    assert engine.reference.map_vs_self.map50_95 > 0.5  # FP32 against its own detections
    # the engine's weights are back to FP32 afterwards
    assert torch.equal(
        engine.run_quantized({}, start_block=layer.block_index).raw, engine.reference.output.raw
    )
