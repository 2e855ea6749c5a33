"""Block reconstruction: codes re-rounded per block against the FP32 block output."""

from __future__ import annotations

import torch

from quantsweep.core.config import Recovery, WeightQuantConfig
from quantsweep.quant.block_reconstruction import reconstruct_records
from quantsweep.quant.recovery import recover
from quantsweep.quant.scheme import quantize_scheme
from tests.conftest import calibrated_tiny_model
from tests.quant.test_distill import W4A8, W8A8, _head_loss


def test_reconstruction_lowers_the_head_error_with_codes_next_to_the_float_weight(tiny_data) -> None:
    network, batch, layers, ranges = calibrated_tiny_model(tiny_data)
    images = batch.images
    assignment = {layer.name: W8A8 for layer in layers}
    records = quantize_scheme(network, assignment, images, config=WeightQuantConfig(), act_ranges=ranges)
    before_state = {k: v.clone() for k, v in network.module.state_dict().items()}

    tuned = reconstruct_records(network, records, images, act_ranges=ranges, asymmetric=False, steps=60)

    before, after = _head_loss(network, records, ranges, images), _head_loss(network, tuned, ranges, images)
    assert after < 0.95 * before, (before, after)
    changed = [n for n in records if not torch.equal(tuned[n].codes, records[n].codes)]
    assert changed
    for name in changed:
        record, new = records[name], tuned[name]
        assert torch.equal(new.scale, record.scale) and new.method == f"{record.method}+reconstruct"
        # every code is one of the two around the float weight, saturated to the INT8 range
        # (MSE-chosen scales clip the largest weights)
        floor = torch.floor(network.module.get_submodule(name).weight / record.scale)
        step = new.codes - floor.clamp(-128, 127)
        assert bool(((step == 0) | (step == 1)).all()), name
        assert int(new.codes.min()) >= -128 and int(new.codes.max()) <= 127
    after_state = network.module.state_dict()
    assert all(torch.equal(after_state[k], v) for k, v in before_state.items())


def test_reconstruct_is_a_registered_recovery(tiny_data) -> None:
    network, batch, layers, ranges = calibrated_tiny_model(tiny_data)
    names = [layer.name for layer in layers[:3]]
    records = quantize_scheme(
        network, dict.fromkeys(names, W4A8), batch.images, config=WeightQuantConfig(), act_ranges=ranges
    )
    config = WeightQuantConfig(recovery=Recovery.RECONSTRUCT, recovery_steps=8)
    tuned = recover(network, records, batch.images, config=config, act_ranges=ranges, asymmetric=True)
    assert tuned.keys() == records.keys()
    assert all(r.method.endswith("+reconstruct") or r == records[n] for n, r in tuned.items())
