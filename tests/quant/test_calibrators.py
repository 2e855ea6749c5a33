"""Activation calibrators and the asymmetric UINT8 activation grid."""

from __future__ import annotations

import pytest
import torch

from quantsweep.core.config import ActDtype, CalibConfig, CalibMethod
from quantsweep.quant.calibrators import calibrate_ranges, ranges_record, read_ranges
from quantsweep.quant.numerics import ActRange, act_qparams, fake_quant_act


def _calibrate(x: torch.Tensor, method: CalibMethod) -> ActRange:
    layer = torch.nn.Identity()

    def batches():
        for chunk in x.split(len(x) // 2):
            layer(chunk)
            yield None

    module = torch.nn.Sequential(layer)
    return calibrate_ranges(module, ["0"], batches(), calib=CalibConfig(method=method))["0"]


def _error(x: torch.Tensor, rng: ActRange, act: ActDtype) -> float:
    scale, zero = act_qparams(rng, act)
    return float((fake_quant_act(x, scale=scale, act=act, zero_point=zero) - x).pow(2).mean())


@pytest.fixture(scope="module")
def heavy_tailed() -> torch.Tensor:
    """A Laplace bulk with rare outliers, as conv inputs often look."""
    torch.manual_seed(1)
    x = torch.distributions.Laplace(0.0, 1.0).sample((4, 64, 32, 32))
    outliers = torch.rand(x.shape) < 1e-4
    return torch.where(outliers, x.sign() * 60.0, x)


@pytest.mark.parametrize("method", [CalibMethod.MSE, CalibMethod.ENTROPY, CalibMethod.PERCENTILE])
def test_clipping_calibrators_clip_heavy_tails(heavy_tailed, method) -> None:
    full = _calibrate(heavy_tailed, CalibMethod.MAX)
    clipped = _calibrate(heavy_tailed, method)
    assert full.amax == float(heavy_tailed.abs().max())
    assert clipped.amax < 0.95 * full.amax
    assert full.lo <= clipped.lo < 0 < clipped.hi <= full.hi


def test_mse_range_has_the_lowest_error(heavy_tailed) -> None:
    ranges = {m: _calibrate(heavy_tailed, m) for m in CalibMethod}
    for act in (ActDtype.INT8, ActDtype.UINT8):
        errors = {m: _error(heavy_tailed, r, act) for m, r in ranges.items()}
        assert errors[CalibMethod.MSE] <= 1.01 * min(errors.values()), (act, errors)
        assert errors[CalibMethod.MSE] < errors[CalibMethod.MAX]


def test_uint8_doubles_the_resolution_of_mostly_positive_inputs() -> None:
    x = torch.nn.functional.silu(torch.randn(2, 16, 32, 32) * 3)
    rng = _calibrate(x, CalibMethod.MAX)
    symmetric, asymmetric = act_qparams(rng, ActDtype.INT8), act_qparams(rng, ActDtype.UINT8)
    assert asymmetric[0] < 0.55 * symmetric[0]
    assert 0 < asymmetric[1] < 20  # SiLU's small negative tail gets a few codes
    assert _error(x, rng, ActDtype.UINT8) < 0.35 * _error(x, rng, ActDtype.INT8)
    assert (
        fake_quant_act(torch.zeros(3), scale=asymmetric[0], act=ActDtype.UINT8, zero_point=asymmetric[1])
        .eq(0)
        .all()
    )


def test_ranges_record_round_trip_and_older_records() -> None:
    ranges = {"a": ActRange(-0.25, 4.0, 3.5)}
    payload = ranges_record(ranges, CalibConfig(method=CalibMethod.MSE))
    assert read_ranges(payload) == ranges
    assert payload["amax"] == {"a": 3.5}
    assert read_ranges({"method": "max", "amax": {"a": 2.0}}) == {"a": ActRange(-2.0, 2.0, 2.0)}


def test_every_method_has_a_calibrator_and_every_weight_method_a_spec() -> None:
    from quantsweep.core.config import CalibMethod, WeightMethod  # noqa: PLC0415
    from quantsweep.quant.calibrators import CALIBRATORS  # noqa: PLC0415
    from quantsweep.quant.layer_quant import WEIGHT_METHODS  # noqa: PLC0415

    assert set(CALIBRATORS) == set(CalibMethod)
    assert set(WEIGHT_METHODS) == set(WeightMethod)
    assert not WEIGHT_METHODS[WeightMethod.RTN].needs_statistics
