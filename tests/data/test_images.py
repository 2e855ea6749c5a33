from __future__ import annotations

import cv2
import numpy as np
import pytest

from quantsweep.core.errors import InputError
from quantsweep.data.images import letterbox, load_batch, resolve_images
from quantsweep.data.shapes import generate_split


def test_letterbox_pads_the_short_side_centred() -> None:
    image = np.full((100, 200, 3), 255, np.uint8)
    boxed, ratio, (left, top) = letterbox(image, 64)
    assert boxed.shape == (64, 64, 3) and ratio == pytest.approx(0.32)
    assert (left, top) == (0, 16)
    assert (boxed[:16] == 114).all() and (boxed[48:] == 114).all() and (boxed[16:48] == 255).all()


def test_labels_follow_the_letterbox(tmp_path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((100, 200, 3), np.uint8))
    (labels / "a.txt").write_text("3 0.5 0.5 0.5 0.2\n")  # 100x20 px box centred in 200x100
    batch = load_batch(resolve_images(images), imgsz=64)
    assert batch.images.shape == (1, 3, 64, 64)
    cls, x1, y1, x2, y2 = batch.labels[0][0]
    assert cls == 3
    assert (x1, y1, x2, y2) == pytest.approx((16, 28.8, 48, 35.2), abs=1e-4)


def test_list_file_paths_are_relative_to_the_list(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "x.jpg"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "list.txt").write_text("# calibration\nsub/x.jpg\n")
    assert resolve_images(tmp_path / "list.txt").paths == (tmp_path / "sub" / "x.jpg",)
    (tmp_path / "bad.txt").write_text("sub/missing.jpg\n")
    with pytest.raises(InputError, match=r"missing\.jpg"):
        resolve_images(tmp_path / "bad.txt")


def test_data_yaml_and_seeded_subset(tiny_data) -> None:
    full = resolve_images(tiny_data)
    assert len(full.paths) == 8 and full.has_labels
    a, b = full.subset(count=3, seed=1), full.subset(count=3, seed=1)
    assert a == b and len(a.paths) == 3
    assert full.subset(count=3, seed=None).paths == full.paths[:3]
    assert full.subset(count=3, seed=2) != a


def test_generator_is_deterministic_and_labelled(tmp_path) -> None:
    one = generate_split(tmp_path / "one", split="val", count=3, size=64, split_seed=7)
    two = generate_split(tmp_path / "two", split="val", count=3, size=64, split_seed=7)
    for name in ("val_00000.jpg", "val_00002.jpg"):
        assert (one.parent / "images/val" / name).read_bytes() == (
            two.parent / "images/val" / name
        ).read_bytes()
    assert resolve_images(one).has_labels
