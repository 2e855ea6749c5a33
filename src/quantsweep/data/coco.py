"""COCO ``instances_*.json`` as an image set: images under an image root, boxes mapped to model classes.

Category ids are mapped to the model's class indices by name, so a json whose ids differ from the
model's (COCO's 1..90 with gaps, or 1-based ids) lines up with it. Crowd annotations
(``iscrowd: 1``) are left out of the targets: our evaluator has no ignore regions (see README,
"COCO data").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from quantsweep.core.errors import InputError


def is_coco_json(source: Path) -> bool:
    """A ``.json`` file is read as COCO instances."""
    return source.suffix.lower() == ".json"


def _load(json_path: Path) -> dict:
    try:
        data = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{json_path} is not a readable COCO json ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{json_path} has no 'images' list (expected a COCO instances json)")
    return data


def _default_root(json_path: Path, first_file: str) -> Path:
    """The json's folder, or where the usual layouts put the images of ``instances_<split>.json``:
    ``images/<split>`` beside it (Ultralytics, this project's generator) or ``../<split>`` (COCO).
    """
    split = json_path.stem.removeprefix("instances_")
    here = json_path.parent
    for root in (here, here / "images" / split, here.parent / split, here.parent / "images" / split):
        if (root / first_file).is_file():
            return root
    return here


def coco_image_paths(json_path: Path, *, image_root: Path | None = None) -> list[Path]:
    """The json's images, in its order, found by ``file_name`` under ``image_root`` (default: its
    folder, or ``images/<split>`` beside it, or ``../<split>``).
    """
    data = _load(json_path)
    if image_root is not None:
        root = Path(image_root)
    else:
        root = (
            _default_root(json_path, data["images"][0]["file_name"]) if data["images"] else json_path.parent
        )
    paths = []
    for entry in data["images"]:
        path = root / entry["file_name"]
        if not path.is_file():
            raise InputError(
                f"image '{entry['file_name']}' of {json_path} not found under {root} (set --image-root)"
            )
        paths.append(path)
    return paths


def category_map(categories: list[dict], class_names: Mapping[int, str], *, used: set[int]) -> dict[int, int]:
    """COCO category id -> model class index, by name; every used category must exist in the model."""
    by_name = {name: index for index, name in class_names.items()}
    names = {c["id"]: c["name"] for c in categories}
    unknown_ids = sorted(used - set(names))
    if unknown_ids:
        raise InputError(f"annotations use category ids {unknown_ids} that the json does not define")
    missing = sorted(names[c] for c in used if names[c] not in by_name)
    if missing:
        raise InputError(
            f"COCO categories {', '.join(missing)} are not classes of the model "
            f"(model classes: {', '.join(class_names.values())})"
        )
    return {cid: by_name[name] for cid, name in names.items() if name in by_name}


def coco_labels(json_path: Path, class_names: Mapping[int, str]) -> list[np.ndarray]:
    """Per image (json order) ``[M, 5]``: model class, x1, y1, x2, y2 in the original image's pixels."""
    data = _load(json_path)
    annotations = [a for a in data.get("annotations", []) if not a.get("iscrowd", 0)]
    mapping = category_map(
        data.get("categories", []), class_names, used={a["category_id"] for a in annotations}
    )
    rows: dict[int, list[list[float]]] = {entry["id"]: [] for entry in data["images"]}
    for ann in annotations:
        if ann["image_id"] not in rows:
            raise InputError(f"annotation {ann.get('id')} of {json_path} names an unknown image")
        x, y, w, h = ann["bbox"]
        rows[ann["image_id"]].append([mapping[ann["category_id"]], x, y, x + w, y + h])
    return [np.array(rows[e["id"]], dtype=np.float32).reshape(-1, 5) for e in data["images"]]
