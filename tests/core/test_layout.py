"""The run-directory layout: one place builds the paths and finds a run from a file in it."""

from __future__ import annotations

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.core.layout import eval_dir_of_results, format_dir, results_dir, search_dir, sweep_dir_of


def test_a_report_finds_its_sweep_for_any_format(tmp_path) -> None:
    for fmt in (
        QuantFormat(weight=WeightDtype.INT8, act=ActDtype.INT8, granularity=Granularity.PER_CHANNEL),
        QuantFormat(
            weight=WeightDtype.INT4,
            act=ActDtype.FP16,
            granularity=Granularity.PER_CHANNEL,
            int4_block_size=32,
        ),
    ):
        report = format_dir(tmp_path / "sweep", fmt) / "report.json"
        assert sweep_dir_of(report, fmt) == (tmp_path / "sweep").resolve()


def test_results_and_search_sit_side_by_side(tmp_path) -> None:
    results = results_dir(tmp_path, "ort-cpu")
    assert eval_dir_of_results(results) == tmp_path
    assert search_dir(eval_dir_of_results(results), "ort-cpu").parent.parent == tmp_path
    assert search_dir(tmp_path, "ort-cpu") != results
