"""What every stage driver shares: progress reporting, device checks, reading a sweep run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from quantsweep.core.config import SweepConfig
from quantsweep.core.errors import InputError
from quantsweep.core.records import read_json
from quantsweep.data.images import Batch, load_batch, resolve_images
from quantsweep.models import LoadedModel, load_model
from quantsweep.models.network import StagedNetwork
from quantsweep.quant.apply import calibrate_inputs
from quantsweep.quant.numerics import ActRange
from quantsweep.sensitivity.runner import ProgressFn
from quantsweep.targets.base import ModelSource

ProgressFactory = Callable[[int, str], AbstractContextManager[ProgressFn]]


@contextlib.contextmanager
def no_progress(_total: int, _label: str) -> Iterator[ProgressFn]:
    """A progress reporter that reports nothing (library default)."""
    yield lambda _message: None


def check_device(device: str) -> None:
    """Fail with one clear line for an unknown device, or when CUDA (or that GPU) is absent."""
    kind, colon, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise InputError(f"unknown device '{device}'; valid: cpu, cuda, cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} requested, but CUDA is not available on this machine")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InputError(f"--device {device}: this machine has {count} CUDA device(s), from cuda:0")


def read_sweep_config(sweep_dir: Path) -> SweepConfig:
    """The resolved configuration a sweep run recorded."""
    path = Path(sweep_dir) / "config.json"
    if not path.is_file():
        raise InputError(f"{sweep_dir} is not a sweep run directory (no config.json)")
    return SweepConfig.from_dict(read_json(path, "sweep_config"))


def calibrate(
    network: StagedNetwork, batch: Batch, config: SweepConfig, names: list[str]
) -> dict[str, ActRange]:
    """Input ranges of the named layers over the calibration images, in the sweep's chunks.

    The images go where the network is, in its dtype (a later stage calibrates the sweep's model
    on the CPU, whatever device the sweep ran on).
    """
    param = next(network.module.parameters())

    def drive() -> Iterator[None]:
        with torch.no_grad():
            for start in range(0, len(batch.images), config.batch_size):
                chunk = batch.images[start : start + config.batch_size]
                network.run(chunk.to(device=param.device, dtype=param.dtype))
                yield None

    return calibrate_inputs(network.module, names, drive(), calib=config.calib)


@dataclass
class RunCache:
    """What one ``quantsweep run`` loads once and hands to the stages after the sweep.

    A stage run alone gets an empty cache and loads for itself; inside a run the schemes stage
    (once per swept combination) and the materialize stage share one model load, one calibration
    batch and one FP32 export with its layer mapping.
    """

    model: LoadedModel | None = None
    calib: Batch | None = None
    fp32_onnx: Path | None = None
    mapping: Any = None  # onnx_graph.export.LayerMapping of ``fp32_onnx``

    def load(self, config: SweepConfig) -> LoadedModel:
        """The sweep's model on CPU (loaded the first time it is asked for)."""
        if self.model is None:
            self.model = load_model(config.model, head=config.head)
        return self.model

    def batch(self, config: SweepConfig) -> Batch:
        """The sweep's calibration images (loaded the first time)."""
        if self.calib is None:
            self.calib = calibration_batch(config)
        return self.calib


def calibration_set(config: SweepConfig):
    """The sweep's calibration image files, the same seeded subset it used."""
    return resolve_images(config.images, image_root=config.image_root).subset(
        count=config.max_images, seed=config.seed
    )


def calibration_batch(config: SweepConfig) -> Batch:
    """The sweep's calibration images, the same seeded subset it used."""
    return load_batch(calibration_set(config), imgsz=config.imgsz)


def model_source(config: SweepConfig, fp32_path: Path, *, images: torch.Tensor | None = None) -> ModelSource:
    """The run's checkpoint, FP32 ONNX and calibration images (loaded unless given), for targets
    and baselines that make their artifacts from the model."""
    files = calibration_set(config)
    return ModelSource(
        fp32_path=fp32_path,
        images=load_batch(files, imgsz=config.imgsz).images if images is None else images,
        model=Path(config.model),
        calib_paths=tuple(files.paths),
        imgsz=config.imgsz,
        head=config.head,
    )
