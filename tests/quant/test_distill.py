"""Output distillation: biases and weight scales tuned against the FP32 head, codes untouched."""

from __future__ import annotations

import pytest
import torch

from quantsweep.core.config import (
    ActDtype,
    Granularity,
    QuantFormat,
    Recovery,
    WeightDtype,
    WeightQuantConfig,
)
from quantsweep.core.errors import InputError
from quantsweep.quant.apply import quantized_layers
from quantsweep.quant.distill import distill_records, output_loss, simulated_act
from quantsweep.quant.recovery import recover
from quantsweep.quant.scheme import quantize_scheme
from tests.conftest import calibrated_tiny_model

W4A8 = QuantFormat(WeightDtype.INT4, ActDtype.INT8, Granularity.PER_CHANNEL)
W8A8 = QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL)


def _head_loss(network, records, ranges, images) -> float:
    """The quantized model's output loss against FP32, simulated as the artifacts run it."""
    assignment = {name: record.fmt for name, record in records.items()}
    with torch.no_grad():
        reference = network.run(images)[0]
        with quantized_layers(network.module, assignment, act_ranges=ranges, weights=records):
            return float(output_loss(network.run(images)[0], reference))


def test_distill_lowers_the_head_error_and_keeps_every_code(tiny_data) -> None:
    network, batch, layers, ranges = calibrated_tiny_model(tiny_data)
    images = batch.images
    assignment = {layer.name: W8A8 for layer in layers}
    records = quantize_scheme(network, assignment, images, config=WeightQuantConfig(), act_ranges=ranges)
    before_state = {k: v.clone() for k, v in network.module.state_dict().items()}
    trainable = [p.requires_grad for p in network.module.parameters()]

    tuned = distill_records(network, records, images, act_ranges=ranges, asymmetric=False, steps=80)

    before, after = _head_loss(network, records, ranges, images), _head_loss(network, tuned, ranges, images)
    assert after < 0.9 * before, (before, after)
    for name, record in records.items():
        assert torch.equal(tuned[name].codes, record.codes), name  # the integer codes stay GPTQ's
        assert tuned[name].method == f"{record.method}+distill"
    assert any(not torch.equal(tuned[n].scale, records[n].scale) for n in records)
    # the float model is left exactly as it was, trainable flags included
    after_state = network.module.state_dict()
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], v) for k, v in before_state.items())
    assert [p.requires_grad for p in network.module.parameters()] == trainable


def test_recovery_none_returns_the_records_and_distill_is_registered(tiny_data) -> None:
    network, batch, layers, ranges = calibrated_tiny_model(tiny_data)
    names = [layer.name for layer in layers[:3]]
    records = quantize_scheme(
        network, dict.fromkeys(names, W4A8), batch.images, config=WeightQuantConfig(), act_ranges=ranges
    )
    none = WeightQuantConfig()
    kept = recover(network, records, batch.images, config=none, act_ranges=ranges, asymmetric=True)
    assert kept == records
    config = WeightQuantConfig(recovery=Recovery.DISTILL, recovery_steps=2)
    tuned = recover(network, records, batch.images, config=config, act_ranges=ranges, asymmetric=True)
    assert all(r.method.endswith("+distill") for r in tuned.values())


def test_the_asymmetric_placements_are_simulated_as_uint8() -> None:
    assert simulated_act(ActDtype.INT8, asymmetric=True) is ActDtype.UINT8
    assert simulated_act(ActDtype.INT8, asymmetric=False) is ActDtype.INT8
    assert simulated_act(ActDtype.FP16, asymmetric=True) is ActDtype.FP16


def test_recovery_settings_round_trip_and_bad_steps_are_refused() -> None:
    config = WeightQuantConfig(recovery=Recovery.DISTILL, recovery_steps=50)
    assert WeightQuantConfig.from_dict(config.to_dict()) == config
    older = {k: v for k, v in WeightQuantConfig().to_dict().items() if not k.startswith("recovery")}
    assert WeightQuantConfig.from_dict(older).recovery is Recovery.NONE  # runs before recovery existed
    with pytest.raises(InputError, match="recovery steps"):
        WeightQuantConfig(recovery_steps=0)
