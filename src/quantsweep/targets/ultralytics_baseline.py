"""Ultralytics' one-line INT8 export as a target's baseline: what a deployment engineer tries first.

``model.export(format='onnx', int8=True)`` for ONNX Runtime and ``format='openvino', int8=True``
for OpenVINO, calibrated on the run's own calibration images; the artifact lands beside the
target's other artifacts, and evaluate scores and times it in the same pass as quantsweep's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from quantsweep.models.ultralytics_adapter import UltralyticsExport, export_int8
from quantsweep.targets.base import ModelSource

ULTRALYTICS_INT8 = "ultralytics_int8"


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Everything written to stdout and stderr inside (Python's and native libraries' alike: the
    exporters' banners, progress bars and warnings) goes to ``log`` instead of the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with log.open("ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def write_ultralytics_int8(inputs: ModelSource, path: Path, *, fmt: UltralyticsExport) -> Path:
    """Export with Ultralytics into a scratch folder; move the artifact to ``path`` (``.onnx``) or
    beside it with its own suffix (OpenVINO's ``.xml`` with its ``.bin``, ``.tflite``); return the
    file a deployer loads. What the exporters print goes to ``<name>.export.log`` beside it."""
    with (
        _output_to(path.with_suffix(".export.log")),
        tempfile.TemporaryDirectory(prefix="qs-ultralytics-") as tmp,
    ):
        exported = export_int8(
            inputs.model, fmt=fmt, calib_paths=inputs.calib_paths, imgsz=inputs.imgsz, work_dir=Path(tmp)
        )
        if exported.suffix == ".onnx":
            shutil.move(exported, path)
            return path
        target = path.with_suffix(exported.suffix)
        shutil.move(exported, target)
        if exported.with_suffix(".bin").is_file():  # OpenVINO IR weights
            shutil.move(exported.with_suffix(".bin"), target.with_suffix(".bin"))
        return target
