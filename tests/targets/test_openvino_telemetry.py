"""quantsweep's own OpenVINO conversions send no usage telemetry, and leave the user's setting be."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantsweep.targets import get_backend

telemetry_utils = pytest.importorskip("openvino.tools.ovc.telemetry_utils")
sender = pytest.importorskip("openvino_telemetry.utils.sender")


def _conv() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["output0"], name="conv")],
        "conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4, 14, 14])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_converting_an_artifact_sends_nothing_and_keeps_the_consent(monkeypatch, tmp_path) -> None:
    # a user who never ran `opt_in_out`: the converter would send (CI machines decline on their own,
    # so consent is set here as on such a user's machine, and nothing leaves this process)
    sent = []
    monkeypatch.setattr(sender.TelemetrySender, "send", lambda self, backend, message: sent.append(message))
    telemetry = telemetry_utils.init_ovc_telemetry()
    monkeypatch.setattr(telemetry, "consent", True)
    ir = get_backend("openvino").save(_conv(), tmp_path / "conv.onnx")
    assert ir.suffix == ".xml" and ir.with_suffix(".bin").is_file()
    assert sent == []
    assert telemetry.consent is True  # the user's own conversions afterwards are theirs to decide
