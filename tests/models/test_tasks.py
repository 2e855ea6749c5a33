"""Only detection models are accepted; every other Ultralytics task stops with one line."""

from __future__ import annotations

import pytest
import torch

from quantsweep.cli.main import main
from quantsweep.core.errors import InputError
from quantsweep.models import load_model


@pytest.mark.parametrize(
    ("yaml_name", "task"),
    [("yolov8n-seg.yaml", "segment"), ("yolov8n-pose.yaml", "pose"), ("yolov8n-obb.yaml", "obb")],
)
def test_other_tasks_are_refused_by_name(yaml_name, task) -> None:
    with pytest.raises(
        InputError, match=f"is an Ultralytics {task} model; quantsweep supports detect models only"
    ):
        load_model(yaml_name)


def test_a_classify_checkpoint_ends_with_one_line(tmp_path, capsys) -> None:
    from ultralytics.nn.tasks import ClassificationModel  # noqa: PLC0415

    path = tmp_path / "cls.pt"
    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", nc=4, verbose=False)}, path)
    assert main(["layers", "--model", str(path), "--imgsz", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"quantsweep: error: {path} is an Ultralytics classify model; quantsweep supports detect models only"
    ]


def test_detection_families_are_accepted() -> None:
    for name in ("yolov8n.yaml", "yolov10n.yaml"):
        assert load_model(name, num_classes=2).network.metadata["quantsweep_output"] in ("raw", "end2end")
