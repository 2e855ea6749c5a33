"""quantsweep's own OpenVINO conversions send no usage telemetry, and leave the user's setting be."""

from __future__ import annotations

import pytest

from quantsweep.targets import get_backend

telemetry_utils = pytest.importorskip("openvino.tools.ovc.telemetry_utils")
sender = pytest.importorskip("openvino_telemetry.utils.sender")


def test_converting_an_artifact_sends_nothing_and_keeps_the_consent(tiny_onnx, monkeypatch, tmp_path) -> None:
    # a user who never ran `opt_in_out`: the converter would send (CI machines decline on their own,
    # so consent is set here as on such a user's machine, and nothing leaves this process)
    sent = []
    monkeypatch.setattr(sender.TelemetrySender, "send", lambda self, backend, message: sent.append(message))
    telemetry = telemetry_utils.init_ovc_telemetry()
    monkeypatch.setattr(telemetry, "consent", True)
    ir = get_backend("openvino").save(tiny_onnx["model"], tmp_path / "fp32.onnx")
    assert ir.suffix == ".xml" and ir.with_suffix(".bin").is_file()
    assert sent == []
    assert telemetry.consent is True  # the user's own conversions afterwards are theirs to decide
