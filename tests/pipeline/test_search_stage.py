"""The search target: relative and absolute drop modes, against labels or against FP32."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from quantsweep.config import DropMode
from quantsweep.pipeline.search_stage import SearchRequest, _target


def _context(gt: float | None, vs_fp32: float = 0.97) -> SimpleNamespace:
    return SimpleNamespace(fp32_map50_95_gt=gt, fp32_map50_95_vs_fp32=vs_fp32)


def test_relative_and_absolute_targets_differ() -> None:
    relative = SearchRequest(Path("-"), max_drop=0.05, drop_mode=DropMode.RELATIVE)
    absolute = SearchRequest(Path("-"), max_drop=0.05, drop_mode=DropMode.ABSOLUTE)
    assert _target(_context(0.8), relative) == (0.8, pytest.approx(0.76), "map50_95_gt")
    assert _target(_context(0.8), absolute) == (0.8, pytest.approx(0.75), "map50_95_gt")


def test_without_labels_the_target_is_agreement_with_fp32() -> None:
    absolute = SearchRequest(Path("-"), max_drop=0.1, drop_mode=DropMode.ABSOLUTE)
    assert _target(_context(None, 0.97), absolute) == (0.97, pytest.approx(0.87), "map50_95_vs_fp32")
