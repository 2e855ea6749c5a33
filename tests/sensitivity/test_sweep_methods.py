"""The sweep measures each layer with the configured weight method; configs record the method."""

from __future__ import annotations

import torch

from quantsweep.core.config import (
    ActDtype,
    DetectConfig,
    Granularity,
    QuantFormat,
    SweepConfig,
    WeightDtype,
    WeightMethod,
    WeightQuantConfig,
    WeightSymmetry,
)
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.models.network import enumerate_layers
from quantsweep.quant.scheme import quantize_each_alone, quantize_scheme
from quantsweep.sensitivity.engine import ExactSweep
from tests.conftest import TINY_IMGSZ, tiny_model

INT4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)


def test_gptq_records_lower_the_measured_error_and_reach_the_engine(tiny_data) -> None:
    loaded = tiny_model("yolov8n.yaml")
    batch = load_batch(resolve_images(tiny_data), imgsz=TINY_IMGSZ)
    layers = enumerate_layers(loaded.network, batch.images[:1])
    engine = ExactSweep(loaded.network, batch, batch_size=4, detect=DetectConfig())
    chosen = [layer for layer in layers if layer.name.startswith("model.22.cv2")][:4]
    config = WeightQuantConfig(WeightMethod.GPTQ, WeightSymmetry.SYMMETRIC, bias_correction=True)
    records = quantize_each_alone(
        loaded.network, [x.name for x in chosen], batch.images, formats=[INT4], config=config
    )[INT4.name]
    rtn = [engine.measure(layer, INT4).nmse for layer in chosen]
    gptq = [engine.measure(layer, INT4, weights=records).nmse for layer in chosen]
    assert sum(gptq) < 0.8 * sum(rtn)
    # and the model is float again afterwards
    assert torch.equal(engine.run_quantized({}, start_block=1).raw, engine.reference.output.raw)


def test_first_layer_alone_equals_first_layer_of_the_sequential_pass(tiny_data) -> None:
    loaded = tiny_model("yolov8n.yaml")
    images = load_batch(resolve_images(tiny_data), imgsz=TINY_IMGSZ).images
    names = [x.name for x in enumerate_layers(loaded.network, images[:1])]
    config = WeightQuantConfig()
    alone = quantize_each_alone(loaded.network, names[:3], images, formats=[INT4], config=config)[INT4.name]
    sequential = quantize_scheme(loaded.network, dict.fromkeys(names[:3], INT4), images, config=config)
    assert torch.equal(alone[names[0]].codes, sequential[names[0]].codes)  # nothing upstream
    assert not torch.equal(alone[names[2]].bias, sequential[names[2]].bias)  # upstream error absorbed


def test_sweep_config_records_the_quantizer_and_reads_older_runs() -> None:
    config = SweepConfig(
        model="m.pt",
        images="i",
        formats=(INT4,),
        quantizer=WeightQuantConfig(WeightMethod.MSE, WeightSymmetry.ASYMMETRIC, bias_correction=False),
    )
    assert SweepConfig.from_dict(config.to_dict()) == config
    older = config.to_dict()
    del older["quantizer"]
    assert SweepConfig.from_dict(older).quantizer == WeightQuantConfig(
        WeightMethod.RTN, WeightSymmetry.SYMMETRIC, bias_correction=False
    )


def test_the_exact_sweep_runs_channels_last(tiny_data) -> None:
    """Its passes only measure (models/network.cpu_layout): 1.23 s against 1.55 s per forward."""
    loaded = tiny_model("yolov8n.yaml")
    batch = load_batch(resolve_images(tiny_data), imgsz=TINY_IMGSZ)
    engine = ExactSweep(loaded.network, batch, batch_size=4, detect=DetectConfig())
    assert all(chunk.is_contiguous(memory_format=torch.channels_last) for chunk in engine.chunks)
    first_block = engine.reference.recorded[0][0]
    assert first_block.stride(1) == 1  # the first conv's output, channels innermost
