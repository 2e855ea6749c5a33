"""Run directories: never overwritten, each with what is needed to reproduce it."""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from quantsweep import __version__

_PACKAGES = ("torch", "torchvision", "ultralytics", "numpy", "opencv-python-headless", "onnx", "onnxruntime")


def new_run_dir(out: Path, *, model_name: str, stage: str) -> Path:
    """Create ``out/<model>_<stage>/<timestamp>``, adding a suffix rather than reusing a directory."""
    parent = Path(out) / f"{model_name}_{stage}"
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}_{attempt}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a new run directory under {parent}")


def environment() -> dict[str, Any]:
    """Library versions and machine facts that can change results."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "quantsweep": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }


def file_sha256(path: Path) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
