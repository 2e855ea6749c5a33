"""The evaluation refuses to judge accuracy against an FP32 reference that detects nothing."""

from __future__ import annotations

import pytest

from quantsweep.core.config import DetectConfig
from quantsweep.core.errors import InputError
from quantsweep.evaluation.scoring import Accuracy
from quantsweep.stages.eval_context import check_judgeable


def test_a_reference_with_no_detection_is_refused_in_one_line() -> None:
    # a model built from a YAML (random weights): no mAP against the labels, no pseudo-label (NaN)
    nothing = Accuracy(
        map50_95_gt=0.0, map50_gt=0.0, map50_95_vs_fp32=float("nan"), map50_vs_fp32=float("nan")
    )
    with pytest.raises(InputError, match=r"detects nothing on the 8 evaluation images .* confidence >= 0.25"):
        check_judgeable(nothing, images=8, detect=DetectConfig())
    unlabelled = Accuracy(
        map50_95_gt=None, map50_gt=None, map50_95_vs_fp32=float("nan"), map50_vs_fp32=float("nan")
    )
    with pytest.raises(InputError):
        check_judgeable(unlabelled, images=8, detect=DetectConfig())


def test_a_reference_judged_by_labels_or_by_its_own_detections_passes() -> None:
    check_judgeable(Accuracy(0.94, 0.98, 0.995, 0.999), images=100, detect=DetectConfig())
    # no labels: judged against its own confident detections
    check_judgeable(Accuracy(None, None, 0.995, 0.999), images=100, detect=DetectConfig())
