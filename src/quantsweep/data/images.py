"""Image sets: resolve a folder, a list file, an Ultralytics data YAML or a COCO json; letterbox.

Labels, when present, are Ultralytics YOLO text files (``images/`` -> ``labels/``, ``.txt``) or the
boxes of a COCO json (data/coco.py), and are returned in the letterboxed pixel frame the model sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from quantsweep.core.errors import InputError
from quantsweep.data.coco import coco_image_paths, coco_labels, is_coco_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PAD_VALUE = 114


@dataclass(frozen=True)
class ImageSet:
    """An ordered list of image files, with optional label files."""

    paths: tuple[Path, ...]
    label_paths: tuple[Path | None, ...]
    # per image [M, 5] (class, x1, y1, x2, y2 in original pixels) when labels come from a COCO json
    boxes: tuple[np.ndarray, ...] | None = None
    labels_source: Path | None = None  # the COCO json the boxes came from

    @property
    def has_labels(self) -> bool:
        """True when every image has a label file (an empty file means no objects) or COCO boxes."""
        if self.boxes is not None:
            return True
        return bool(self.paths) and all(p is not None for p in self.label_paths)

    def subset(self, *, count: int, seed: int | None) -> ImageSet:
        """``count`` images: the first ones (``seed=None``) or a seeded random choice kept in order."""
        if count >= len(self.paths):
            return self
        if seed is None:
            index = list(range(count))
        else:
            index = sorted(np.random.default_rng(seed).choice(len(self.paths), size=count, replace=False))
        return ImageSet(
            tuple(self.paths[i] for i in index),
            tuple(self.label_paths[i] for i in index),
            boxes=None if self.boxes is None else tuple(self.boxes[i] for i in index),
            labels_source=self.labels_source,
        )


@dataclass
class Batch:
    """Letterboxed images ``[N, 3, S, S]`` in 0..1 RGB and, if known, boxes per image."""

    images: torch.Tensor
    labels: list[np.ndarray] | None  # per image [M, 5]: class, x1, y1, x2, y2 in letterbox pixels


def resolve_images(
    source: str | Path,
    *,
    image_root: str | Path | None = None,
    class_names: Mapping[int, str] | None = None,
) -> ImageSet:
    """Resolve a folder, a ``.txt`` list (paths relative to the list), a data ``.yaml`` (its val split)
    or a COCO ``instances_*.json`` (images under ``image_root``, default the json's folder).

    COCO boxes are read only when ``class_names`` (the model's) are given, since categories are
    mapped to classes by name; without them a COCO json gives unlabelled images.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"image source not found: {source}")
    if is_coco_json(source):
        return _coco_image_set(source, image_root=image_root, class_names=class_names)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix in (".yaml", ".yml"):
        paths = _paths_from_data_yaml(source)
    elif source.suffix == ".txt":
        paths = _paths_from_list(source)
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        paths = [source]
    else:
        raise InputError(f"{source} is neither an image folder, a .txt list, a data .yaml nor a COCO .json")
    if not paths:
        raise InputError(f"no images found in {source}")
    return ImageSet(tuple(paths), tuple(_label_path(p) for p in paths))


def _coco_image_set(
    source: Path, *, image_root: str | Path | None, class_names: Mapping[int, str] | None
) -> ImageSet:
    root = None if image_root is None else Path(image_root)
    if root is not None and not root.is_dir():
        raise InputError(f"--image-root {root} is not a folder")
    paths = coco_image_paths(source, image_root=root)
    if not paths:
        raise InputError(f"no images listed in {source}")
    boxes = None if class_names is None else tuple(coco_labels(source, class_names))
    return ImageSet(tuple(paths), (None,) * len(paths), boxes=boxes, labels_source=source)


def _paths_from_list(list_file: Path) -> list[Path]:
    base = list_file.parent
    paths = []
    for raw in list_file.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            path = Path(line) if Path(line).is_absolute() else base / line
            if not path.exists():
                raise InputError(f"image listed in {list_file} not found: {path}")
            paths.append(path)
    return paths


def _paths_from_data_yaml(data_yaml: Path) -> list[Path]:
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{data_yaml} is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or "val" not in data:
        raise InputError(f"{data_yaml} has no 'val' entry (expected an Ultralytics data YAML)")
    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = data_yaml.parent / root
    entries = data["val"] if isinstance(data["val"], list) else [data["val"]]
    paths: list[Path] = []
    for entry in entries:
        target = root / entry
        if not target.exists():
            raise InputError(f"val split of {data_yaml} not found: {target}")
        paths.extend(resolve_images(target).paths)
    return paths


def _label_path(image: Path) -> Path | None:
    parts = list(image.parts)
    if "images" not in parts:
        return None
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    label = Path(*parts).with_suffix(".txt")
    return label if label.exists() else None


def letterbox(image: np.ndarray, imgsz: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize the long side to ``imgsz`` and pad to a square with grey, centred (Ultralytics' val path)."""
    height, width = image.shape[:2]
    ratio = imgsz / max(height, width)
    if ratio != 1:
        new_w, new_h = round(width * ratio), round(height * ratio)
        interp = cv2.INTER_LINEAR if ratio > 1 else cv2.INTER_AREA
        image = cv2.resize(image, (min(new_w, imgsz), min(new_h, imgsz)), interpolation=interp)
    height, width = image.shape[:2]
    pad_w, pad_h = (imgsz - width) / 2, (imgsz - height) / 2
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return image, ratio, (left, top)


def _read_labels(label_file: Path, *, width: int, height: int, ratio: float, pad: tuple[float, float]):
    rows = [line.split() for line in label_file.read_text().splitlines() if line.strip()]
    try:
        table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise InputError(f"label file {label_file} is not in YOLO format (class cx cy w h)") from None
    cls, cx, cy, bw, bh = table.T
    x1 = (cx - bw / 2) * width * ratio + pad[0]
    y1 = (cy - bh / 2) * height * ratio + pad[1]
    x2 = (cx + bw / 2) * width * ratio + pad[0]
    y2 = (cy + bh / 2) * height * ratio + pad[1]
    return np.stack([cls, x1, y1, x2, y2], axis=1).astype(np.float32)


def _letterbox_boxes(boxes: np.ndarray, *, ratio: float, pad: tuple[float, float]) -> np.ndarray:
    """``[M, 5]`` (class, x1, y1, x2, y2) from original pixels into the letterboxed frame."""
    out = boxes.astype(np.float64)
    out[:, [1, 3]] = out[:, [1, 3]] * ratio + pad[0]
    out[:, [2, 4]] = out[:, [2, 4]] * ratio + pad[1]
    return out.astype(np.float32)


def load_batch(image_set: ImageSet, *, imgsz: int) -> Batch:
    """Read, letterbox and stack the images; labels too when every image has them."""
    arrays, labels = [], []
    for i, (path, label_file) in enumerate(zip(image_set.paths, image_set.label_paths, strict=True)):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"unreadable image: {path}")
        height, width = image.shape[:2]
        boxed, ratio, pad = letterbox(image, imgsz)
        arrays.append(boxed[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        if image_set.boxes is not None:
            labels.append(_letterbox_boxes(image_set.boxes[i], ratio=ratio, pad=pad))
        elif label_file is not None:
            labels.append(_read_labels(label_file, width=width, height=height, ratio=ratio, pad=pad))
    images = torch.from_numpy(np.ascontiguousarray(np.stack(arrays))).float() / 255.0
    return Batch(images=images, labels=labels if image_set.has_labels else None)


def fingerprint(image_set: ImageSet) -> list[dict[str, str]]:
    """Path and sha256 of each image, for the run record."""
    return [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in image_set.paths]
