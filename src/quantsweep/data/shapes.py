"""Synthetic detection data: coloured shapes on cluttered backgrounds (the testbed's generator).

Deterministic: the same arguments give the same images and labels on any machine. ``split_seed``
follows the testbed: its val split of ``--seed 0`` is ``rng([1, 0])``, i.e. ``split_seed=1``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring", "ellipse")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(0, 3)
    if kind == 0:
        small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:
        small = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
        img = cv2.GaussianBlur(img, (0, 0), 2.0)
    else:
        img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(rng.integers(5, 25)):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            p1 = tuple(int(v) for v in rng.integers(0, size, 2))
            p2 = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)))
    noise = rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _polygon(cx, cy, radius, sides, rot, inner=None) -> np.ndarray:
    count = 2 * sides if inner else sides
    pts = []
    for i in range(count):
        angle = rot + 2 * math.pi * i / count
        r = radius if (inner is None or i % 2 == 0) else radius * inner
        pts.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return np.array(pts, np.int32)


def _shape_mask(shape: str, mask: np.ndarray, rng, *, cx: int, cy: int, r: int, rot: float) -> np.ndarray:
    polygons = {"square": (4, None), "triangle": (3, None), "star": (5, 0.45), "hexagon": (6, None)}
    if shape in polygons:
        sides, inner = polygons[shape]
        cv2.fillPoly(mask, [_polygon(cx, cy, r, sides, rot, inner=inner)], 255)
    elif shape == "circle":
        cv2.circle(mask, (cx, cy), r, 255, -1)
    elif shape == "cross":
        w = max(2, r // 3)
        rotation = cv2.getRotationMatrix2D((cx, cy), math.degrees(rot), 1.0)
        tmp = np.zeros_like(mask)
        cv2.rectangle(tmp, (cx - r, cy - w), (cx + r, cy + w), 255, -1)
        cv2.rectangle(tmp, (cx - w, cy - r), (cx + w, cy + r), 255, -1)
        mask = cv2.warpAffine(tmp, rotation, (mask.shape[1], mask.shape[0]))
    elif shape == "ring":
        cv2.circle(mask, (cx, cy), r, 255, max(2, r // 3))
    else:  # ellipse
        axes = (r, max(3, int(r * rng.uniform(0.35, 0.65))))
        cv2.ellipse(mask, (cx, cy), axes, math.degrees(rot), 0, 360, 255, -1)
    return mask


def _draw(img: np.ndarray, rng, shape: str, *, cx: int, cy: int, r: int) -> np.ndarray | None:
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    rot = rng.uniform(0, 2 * math.pi)
    mask = _shape_mask(shape, np.zeros(img.shape[:2], np.uint8), rng, cx=cx, cy=cy, r=r, rot=rot)
    if np.count_nonzero(mask) < 6:
        return None
    shade = rng.uniform(0.75, 1.0)
    img[mask > 0] = (np.array(colour) * shade).astype(np.uint8)
    return mask > 0


def _one_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list]:
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    drawn = []
    for _ in range(rng.integers(1, 9)):
        cls_i = int(rng.integers(0, len(CLASSES)))
        r = int(rng.uniform(6, size * 0.18))
        cx, cy = (int(v) for v in rng.integers(r // 2, size - r // 2, 2))
        mask = _draw(img, rng, CLASSES[cls_i], cx=cx, cy=cy, r=r)
        if mask is not None:
            owner[mask] = len(drawn)
            drawn.append((cls_i, int(mask.sum())))
    boxes = []
    for k, (cls_i, total) in enumerate(drawn):  # label only what stays visible after occlusion
        ys, xs = np.nonzero(owner == k)
        if len(xs) >= 6 and len(xs) >= 0.4 * total:
            boxes.append((cls_i, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    return img, boxes


def generate_split(out: Path, *, split: str, count: int, size: int = 320, split_seed: int = 1) -> Path:
    """Write ``count`` images with YOLO labels, a COCO json and a ``data.yaml``; return the YAML path."""
    out = Path(out)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([split_seed, 0])
    coco: dict = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    for i in range(count):
        img, boxes = _one_image(rng, size)
        name = f"{split}_{i:05d}.jpg"
        cv2.imwrite(str(out / "images" / split / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        coco["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
        lines = []
        for cls_i, (x0, y0, x1, y1) in boxes:
            cx, cy, bw, bh = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
            lines.append(f"{cls_i} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": cls_i + 1,
                    "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                    "area": int((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
        (out / "labels" / split / name.replace(".jpg", ".txt")).write_text("\n".join(lines) + "\n")
    (out / f"instances_{split}.json").write_text(json.dumps(coco))
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(CLASSES))
    data_yaml = out / "data.yaml"
    data_yaml.write_text(f"path: {out.resolve()}\nval: images/{split}\nnames:\n{names}\n")
    return data_yaml
