from __future__ import annotations

import json

import pytest
from scipy.stats import spearmanr

from quantsweep.cli.main import main
from quantsweep.core.config import ActDtype, DetectConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.fast import estimate
from tests.conftest import calibrated_tiny_model


def _top(scores: dict[str, float], k: int) -> set[str]:
    return set(sorted(scores, key=lambda n: -scores[n])[:k])


@pytest.mark.parametrize(
    "fmt",
    [
        QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL),
        QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL),
    ],
)
def test_fast_estimate_ranks_like_the_exact_sweep(tiny_data, fmt) -> None:
    network, batch, layers, ranges = calibrated_tiny_model(tiny_data)
    engine = ExactSweep(network, batch, batch_size=8, detect=DetectConfig())
    exact = {x.name: engine.measure(x, fmt, act_ranges=ranges).box_error for x in layers}
    flags = [p.requires_grad for p in network.module.parameters()]
    fast = estimate(network, batch, layers, fmt=fmt, act_ranges=ranges).box_error
    names = [x.name for x in layers]
    assert spearmanr([exact[n] for n in names], [fast[n] for n in names]).statistic >= 0.9
    assert len(_top(exact, 10) & _top(fast, 10)) >= 8
    # first order: the estimate has the exact sweep's units and size, not just its order
    top = max(exact, key=exact.get)
    assert 0.5 < fast[top] / exact[top] < 2.0
    # class-score convs cannot move boxes: zero in both
    cls = next(n for n in names if ".cv3." in n)
    assert fast[cls] == 0.0 and exact[cls] == 0.0
    assert [p.requires_grad for p in network.module.parameters()] == flags  # left as they were


@pytest.mark.slow  # three sweeps through the CLI
def test_hybrid_report_has_the_exact_top_k(tiny_checkpoint, tiny_data, tmp_path) -> None:
    base = [
        "sweep",
        "--model",
        str(tiny_checkpoint),
        "--images",
        str(tiny_data),
        "--imgsz",
        "96",
        "--top-k",
        "5",
    ]
    for method in ("exact", "hybrid", "fast"):
        assert main([*base, "--method", method, "--out", str(tmp_path / method)]) == 0
    reports = {
        m: json.loads(
            next((tmp_path / m).glob("*/*/int4-fp16/per_channel/layer-sensitivity-report.json")).read_text()
        )
        for m in ("exact", "hybrid", "fast")
    }
    assert reports["hybrid"]["top_layers"] == reports["exact"]["top_layers"]
    assert reports["hybrid"]["method"] == "hybrid" and len(reports["hybrid"]["layers"]) == 64
    measured = [row["metrics"]["method"] for row in reports["hybrid"]["layers"]]
    # the 20 the screen ranked highest got GPTQ records and were measured exactly; the rest screened
    assert measured[:20] == ["exact"] * 20 and set(measured[20:]) == {"screen"}
    fast = [row["metrics"]["method"] for row in reports["fast"]["layers"]]
    assert fast[:20] == ["fast"] * 20 and set(fast[20:]) == {"screen"}
    assert all(row["metrics"]["nmse"] is None for row in reports["fast"]["layers"])


def test_fast_needs_the_box_error_ranking(tiny_checkpoint, tiny_data, capsys) -> None:
    argv = [
        "sweep",
        "--model",
        str(tiny_checkpoint),
        "--images",
        str(tiny_data),
        "--imgsz",
        "96",
        "--method",
        "fast",
        "--rank-by",
        "nmse",
    ]
    assert main(argv) == 2
    assert "estimates box_error only" in capsys.readouterr().err
