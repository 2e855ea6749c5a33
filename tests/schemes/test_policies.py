from __future__ import annotations

import pytest

from quantsweep.core.config import (
    ActDtype,
    Granularity,
    HighPrecision,
    LowPrecision,
    QuantFormat,
    WeightDtype,
)
from quantsweep.schemes.policies import (
    RankedLayer,
    SchemeSpace,
    budget,
    first_and_head,
    precisions,
    random_k,
    top_k,
)
from quantsweep.schemes.scheme_records import Policy, Precision, Scheme

# 6 layers in 3 blocks; block 2 is the head. Ranked: c (most sensitive), a, f, b, e, d.
LAYERS = [
    RankedLayer("c", 1, 9.0, 100, 1, 2),
    RankedLayer("a", 2, 5.0, 10, 0, 0),
    RankedLayer("f", 3, 4.0, 1000, 2, 5),
    RankedLayer("b", 4, 1.0, 100, 0, 1),
    RankedLayer("e", 5, 0.5, 100, 2, 4),
    RankedLayer("d", 6, 0.1, 100, 1, 3),
]
LOW, HIGH = Precision(WeightDtype.INT4), Precision(None)
SPACE = SchemeSpace(ranked=LAYERS, onnx_nodes={x.name: f"/{x.name}/Conv" for x in LAYERS}, low=LOW, high=HIGH)


def test_top_k_keeps_the_most_sensitive() -> None:
    scheme = top_k(SPACE, 2)
    assert scheme.kept_layers == ("c", "a") and scheme.name == "k2"
    assert scheme.precision_counts() == {"float": 2, "int4-fp16": 4}
    assert scheme.nodes_to_exclude == ["/a/Conv", "/c/Conv"]  # execution order
    assert [a.torch_name for a in scheme.layers] == ["a", "b", "c", "d", "e", "f"]
    assert top_k(SPACE, 0).avg_weight_bits == 4.0


def test_references_have_the_same_size() -> None:
    one, two = random_k(SPACE, 3, seed=1), random_k(SPACE, 3, seed=1)
    assert one == two and len(one.kept_layers) == 3 and one.policy is Policy.RANDOM
    assert {random_k(SPACE, 3, seed=s).kept_layers for s in range(8)} != {one.kept_layers}  # seed matters
    head = first_and_head(SPACE, 3)
    assert set(head.kept_layers) == {"a", "f", "e"}  # first conv, then head from the output back
    assert first_and_head(SPACE, 2).kept_layers == ("a", "f")


def test_budget_is_greedy_by_sensitivity_per_bit_and_stays_within() -> None:
    total = sum(x.params for x in LAYERS)
    scheme = budget(SPACE, target_bits=4.0 + 28 * 250 / total)  # room for 250 params at +28 bits (FP32)
    assert scheme.avg_weight_bits <= 4.0 + 28 * 250 / total + 1e-9
    # per-bit value: a 5/10 > c 9/100 > b 1/100 > e, d; f (1000 params) never fits
    assert set(scheme.kept_layers) == {"a", "c", "b"}
    with pytest.raises(ValueError, match="below the all-low"):
        budget(SPACE, target_bits=3.0)


def test_scheme_round_trips_through_json() -> None:
    scheme = top_k(SPACE, 3)
    assert Scheme.from_dict(scheme.to_dict()) == scheme


def test_precisions_follow_the_sweep_combination() -> None:
    w4a8 = QuantFormat(WeightDtype.INT4, ActDtype.INT8, Granularity.PER_CHANNEL)
    low, high = precisions(w4a8, low=LowPrecision.INT4, high=HighPrecision.INT8)
    assert (low.label, high.label) == ("int4-int8", "int8-int8")
    low, high = precisions(w4a8, low=LowPrecision.FP8, high=HighPrecision.INT8)
    assert (low.label, high.label) == ("fp8-fp8", "int8-fp16")  # INT8 weights never read FP8 inputs
    low, high = precisions(w4a8, low=LowPrecision.INT4, high=HighPrecision.FLOAT)
    assert high.as_format() is None and high.weight_bits == 32
