"""Model adapters: a file is loaded by the adapter that reads it; one that none reads is one error."""

from __future__ import annotations

import pytest

from quantsweep import models
from quantsweep.core.errors import InputError
from tests.models import toy_adapter


def test_a_file_no_adapter_reads_is_one_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match=r"no model adapter reads .*model\.onnx \(adapters: ultralytics\)"):
        models.load_model(tmp_path / "model.onnx")


def test_a_registered_adapter_loads_its_files(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(models._ADAPTERS, "toy", toy_adapter.__name__)
    loaded = models.load_model(tmp_path / "net.toy")
    assert loaded.name == "net" and toy_adapter.LOADED[-1] == tmp_path / "net.toy"
    assert models.adapter_for("best.pt").__name__ == "quantsweep.models.ultralytics_adapter"
