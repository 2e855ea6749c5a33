from __future__ import annotations

import onnx
import pytest
import torch

from quantsweep.evaluation.artifact_checks import run_onnx, torch_export_output
from quantsweep.models import load_model
from quantsweep.models.network import enumerate_layers
from quantsweep.onnx_graph.export import MappingError, export_fp32, map_layers
from tests.conftest import TINY_IMGSZ, tiny_model


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml", "yolov10n.yaml"])
def test_every_layer_maps_to_its_own_node(name, tmp_path) -> None:
    loaded = tiny_model(name)
    layers = enumerate_layers(loaded.network, torch.zeros(1, 3, TINY_IMGSZ, TINY_IMGSZ))
    model = export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=tmp_path / "m.onnx")
    mapping = map_layers(model, loaded.network.module, layers)
    assert set(mapping.nodes) == {layer.name for layer in layers}  # 100% mapped
    assert len(set(mapping.nodes.values())) == len(layers)  # one node each
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert set(mapping.nodes.values()) <= convs
    assert model.opset_import[0].version == 21


def test_mapping_is_by_weight_content_not_by_name(tmp_path) -> None:
    loaded = tiny_model("yolov8n.yaml")
    layers = enumerate_layers(loaded.network, torch.zeros(1, 3, TINY_IMGSZ, TINY_IMGSZ))
    model = export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=tmp_path / "m.onnx")
    position = {node.name: i for i, node in enumerate(model.graph.node)}
    before = {
        name: position[node] for name, node in map_layers(model, loaded.network.module, layers).nodes.items()
    }
    for i, node in enumerate(model.graph.node):  # names that say nothing about the layer
        node.name = f"node_{(i * 7919) % 100003}"
    after = map_layers(model, loaded.network.module, layers).nodes
    renamed_position = {node.name: i for i, node in enumerate(model.graph.node)}
    assert {name: renamed_position[node] for name, node in after.items()} == before


def test_a_layer_missing_from_the_graph_is_named(tmp_path) -> None:
    loaded = tiny_model("yolov8n.yaml")
    layers = enumerate_layers(loaded.network, torch.zeros(1, 3, TINY_IMGSZ, TINY_IMGSZ))
    model = export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=tmp_path / "m.onnx")
    loaded.network.module.get_submodule("model.3.conv").weight.data += 1.0  # no longer matches its node
    with pytest.raises(MappingError, match=r"model\.3\.conv"):
        map_layers(model, loaded.network.module, layers)


def test_exported_model_runs_and_matches_torch(tmp_path) -> None:
    loaded = tiny_model("yolov10n.yaml")
    path = tmp_path / "m.onnx"
    export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=path)
    images = torch.rand(2, 3, TINY_IMGSZ, TINY_IMGSZ)
    output, providers = run_onnx(path, images)
    reference = torch_export_output(loaded.network, images, assignment={}, act_ranges=None)
    assert providers == ["CPUExecutionProvider"]
    assert output.shape == reference.shape
    assert abs(output - reference).max() < 1e-3 * max(1.0, abs(reference).max())
    onnx.checker.check_model(str(path))


@pytest.mark.slow
def test_testbed_maps_all_118_convs(testbed_checkpoint, tmp_path) -> None:
    loaded = load_model(testbed_checkpoint)
    layers = enumerate_layers(loaded.network, torch.zeros(1, 3, 320, 320))
    model = export_fp32(loaded.network, imgsz=320, path=tmp_path / "m.onnx")
    mapping = map_layers(model, loaded.network.module, layers)
    assert len(mapping.nodes) == 118 == len(set(mapping.nodes.values()))
    assert mapping.nodes["model.0.conv"] == "/model.0/conv/Conv"
