"""COCO instances json as evaluation data, and our mAP against pycocotools' COCOeval."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from quantsweep.core.config import ApConvention, DetectConfig
from quantsweep.core.errors import InputError
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.data.shapes import CLASSES, generate_split
from quantsweep.evaluation.scoring import accuracy
from quantsweep.metrics.coco_eval import cocoeval_map
from quantsweep.metrics.detections import decode
from quantsweep.metrics.map import mean_average_precision
from quantsweep.models import load_model

NAMES = dict(enumerate(CLASSES))


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """Twelve 96-px images written both as YOLO labels and as ``instances_val.json``."""
    return generate_split(
        tmp_path_factory.mktemp("coco"), split="val", count=12, size=96, split_seed=7
    ).parent


def _perturbed(labels: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Detections made from the targets: jittered, some missed, some mislabelled, some spurious."""
    rng = np.random.default_rng(seed)
    out = []
    for target in labels:
        rows = []
        for cls, *box in target.tolist():
            if rng.random() < 0.15:
                continue
            wrong = rng.random() < 0.1
            rows.append([*(np.array(box) + rng.normal(0, 1.5, 4)), rng.uniform(0.2, 1), (cls + wrong) % 8])
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = *rng.uniform(0, 80, 2), *rng.uniform(5, 20, 2)
            rows.append([x, y, x + w, y + h, rng.uniform(0, 0.6), rng.integers(0, 8)])
        det = np.array(rows, np.float32).reshape(-1, 6)
        out.append(det[np.argsort(-det[:, 4], kind="stable")])
    return out


def test_coco_json_gives_the_yolo_labels(split) -> None:
    yolo = load_batch(resolve_images(split / "data.yaml"), imgsz=64)  # letterboxed 96 -> 64
    coco_set = resolve_images(split / "instances_val.json", class_names=NAMES)
    assert coco_set.has_labels and [p.name for p in coco_set.paths] == [
        p.name for p in resolve_images(split / "data.yaml").paths
    ]
    coco = load_batch(coco_set, imgsz=64)
    assert torch.equal(coco.images, yolo.images)
    assert sum(len(t) for t in coco.labels) > 12
    for a, b in zip(coco.labels, yolo.labels, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)  # YOLO text keeps 6 decimals of the same boxes


def test_categories_map_to_model_classes_by_name(split, tmp_path) -> None:
    data = json.loads((split / "instances_val.json").read_text())
    # ids unrelated to class indices, categories listed in another order
    id_of = {c["id"]: 100 + 7 * c["id"] for c in data["categories"]}
    data["categories"] = [{"id": id_of[c["id"]], "name": c["name"]} for c in reversed(data["categories"])]
    for ann in data["annotations"]:
        ann["category_id"] = id_of[ann["category_id"]]
    remapped = tmp_path / "instances_val.json"
    remapped.write_text(json.dumps(data))
    expected = load_batch(resolve_images(split / "instances_val.json", class_names=NAMES), imgsz=96).labels
    got = load_batch(
        resolve_images(remapped, image_root=split / "images" / "val", class_names=NAMES), imgsz=96
    )
    for a, b in zip(got.labels, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # a model whose classes are in another order gets its own indices
    flipped = {7 - i: name for i, name in NAMES.items()}
    other = load_batch(
        resolve_images(remapped, image_root=split / "images" / "val", class_names=flipped), imgsz=96
    )
    np.testing.assert_array_equal(other.labels[0][:, 0], 7 - expected[0][:, 0])


def test_coco_errors_name_the_problem(split, tmp_path) -> None:
    with pytest.raises(InputError, match="COCO categories star are not classes of the model"):
        resolve_images(
            split / "instances_val.json", class_names={i: n for i, n in NAMES.items() if n != "star"}
        )
    moved = tmp_path / "instances_val.json"
    shutil.copyfile(split / "instances_val.json", moved)  # images are not beside it any more
    with pytest.raises(InputError, match=r"val_00000.jpg' of .* not found under"):
        resolve_images(moved, class_names=NAMES)
    assert len(resolve_images(moved, image_root=split / "images" / "val").paths) == 12


def test_our_map_equals_cocoeval_on_the_same_detections(split) -> None:
    labels = load_batch(resolve_images(split / "instances_val.json", class_names=NAMES), imgsz=96).labels
    detections = _perturbed(labels)
    reference = cocoeval_map(detections, labels)
    ours_coco = mean_average_precision(detections, labels, convention=ApConvention.COCO)
    assert abs(ours_coco.map50_95 - reference.map50_95) < 1e-9
    assert abs(ours_coco.map50 - reference.map50) < 1e-9
    # the default integrates like `yolo val` (README, "COCO data"): close, not equal
    ours = mean_average_precision(detections, labels)
    assert 0 < abs(ours.map50_95 - reference.map50_95) < 0.01
    assert 0.2 < reference.map50_95 < 0.9  # neither trivial nor perfect


@pytest.mark.slow
def test_testbed_map_is_the_same_from_coco_json_and_yolo_labels(testbed_checkpoint, tmp_path) -> None:
    """The testbed's first 16 validation images (its split seed), scored from both label forms."""
    data = generate_split(tmp_path, split="val", count=16, size=320, split_seed=1)
    loaded = load_model(testbed_checkpoint)
    yolo = load_batch(resolve_images(data), imgsz=320)
    coco = load_batch(
        resolve_images(tmp_path / "instances_val.json", class_names=loaded.class_names), imgsz=320
    )
    with torch.no_grad():
        detections = decode(loaded.network.run(yolo.images)[0], DetectConfig())
    from_yolo = mean_average_precision(detections, yolo.labels)
    from_coco = mean_average_precision(detections, coco.labels)
    assert abs(from_yolo.map50_95 - from_coco.map50_95) < 1e-3 and from_coco.map50_95 > 0.8
    coco_lib = cocoeval_map(detections, coco.labels)
    coco_ours = mean_average_precision(detections, coco.labels, convention=ApConvention.COCO)
    assert abs(coco_ours.map50_95 - coco_lib.map50_95) < 1e-3


def test_accuracy_records_cocoevals_figure_beside_ours(split) -> None:
    batch = load_batch(resolve_images(split / "instances_val.json", class_names=NAMES), imgsz=96)
    detections = _perturbed(batch.labels)
    acc = accuracy(detections, batch=batch, pseudo=detections)
    assert acc.cocoeval_map50_95_gt == cocoeval_map(detections, batch.labels).map50_95
    assert acc.cocoeval_map50_95_gt != acc.map50_95_gt  # a figure of its own, not ours copied
    unlabelled = accuracy(detections, batch=dataclasses.replace(batch, labels=None), pseudo=detections)
    assert unlabelled.cocoeval_map50_95_gt is None
