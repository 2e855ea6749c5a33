"""A float16 sweep (``--compute-dtype float16``) ranks layers like the float32 one, and is recorded."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import spearmanr

from quantsweep.cli.main import main
from quantsweep.core.config import (
    ActDtype,
    ComputeDtype,
    DetectConfig,
    Granularity,
    QuantFormat,
    SweepConfig,
    WeightDtype,
)
from quantsweep.core.errors import InputError
from quantsweep.models.network import network_dtype, set_compute_dtype
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.fast import estimate
from quantsweep.stages.sweep_stage import resume_sweep
from tests.conftest import calibrated_tiny_model

W8A8 = QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL)
W4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)


def _top(scores: dict[str, float], k: int) -> set[str]:
    return set(sorted(scores, key=lambda n: -scores[n])[:k])


def _agree(a: dict[str, float], b: dict[str, float]) -> tuple[float, int]:
    names = sorted(a)
    return spearmanr([a[n] for n in names], [b[n] for n in names]).statistic, len(_top(a, 10) & _top(b, 10))


@pytest.mark.slow  # full sweeps in two dtypes
@pytest.mark.parametrize("fmt", [W4, W8A8])
def test_float16_sweep_ranks_layers_like_float32(tiny_data, fmt) -> None:
    network, batch, layers, ranges = calibrated_tiny_model(tiny_data)
    scores = {}
    for dtype in (ComputeDtype.FLOAT32, ComputeDtype.FLOAT16):
        set_compute_dtype(network, dtype)
        engine = ExactSweep(network, batch, batch_size=8, detect=DetectConfig())
        assert engine.reference.output.raw.dtype == torch.float32  # scored in float32
        exact = {x.name: engine.measure(x, fmt, act_ranges=ranges).box_error for x in layers}
        fast = estimate(network, batch, layers, fmt=fmt, act_ranges=ranges).box_error
        scores[dtype] = exact, fast
    assert network_dtype(network) == torch.float16
    # the head block runs in float32, every other block in float16
    assert {p.dtype for p in network.blocks[-1].parameters()} == {torch.float32}
    assert {p.dtype for p in network.blocks[0].parameters()} == {torch.float16}
    (exact32, fast32), (exact16, fast16) = scores[ComputeDtype.FLOAT32], scores[ComputeDtype.FLOAT16]
    rho, overlap = _agree(exact32, exact16)
    assert rho >= 0.95 and overlap >= 8, (rho, overlap)
    rho, overlap = _agree(fast32, fast16)
    assert rho >= 0.95 and overlap >= 8, (rho, overlap)
    top = max(exact32, key=exact32.get)
    assert 0.8 < exact16[top] / exact32[top] < 1.25  # same units and size, not only the same order


@pytest.mark.slow  # full sweeps in two dtypes
def test_compute_dtype_is_recorded_and_a_resume_in_another_dtype_is_refused(
    capsys, tiny_checkpoint, tiny_data, tmp_path
) -> None:
    argv = ["sweep", "--model", str(tiny_checkpoint), "--images", str(tiny_data), "--imgsz", "96"]
    argv += ["--max-images", "4", "--layers", "model.2*", "--method", "fast", "--out", str(tmp_path)]
    assert main([*argv, "--compute-dtype", "float16"]) == 0
    (run,) = list(tmp_path.glob("*_layer_sensitivity/*"))
    config = SweepConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert config.compute_dtype is ComputeDtype.FLOAT16
    capsys.readouterr()
    assert main(["sweep", "--resume", str(run), "--compute-dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was swept with --compute-dtype float16, not float32" in err[0]
    with pytest.raises(InputError, match="compute-dtype float16"):
        resume_sweep(run, compute_dtype=ComputeDtype.FLOAT32)
    assert resume_sweep(run, compute_dtype=ComputeDtype.FLOAT16) == run  # the same dtype resumes


def test_sweep_config_round_trips_the_compute_dtype_and_reads_older_runs() -> None:
    config = SweepConfig(model="m.pt", images="i", formats=(W4,), compute_dtype=ComputeDtype.FLOAT16)
    data = config.to_dict()
    assert data["compute_dtype"] == "float16"
    assert SweepConfig.from_dict(data) == config
    del data["compute_dtype"]
    assert SweepConfig.from_dict(data).compute_dtype is ComputeDtype.FLOAT32
