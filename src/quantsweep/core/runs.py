"""Run directories: never overwritten, each with what is needed to reproduce it."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from quantsweep import __version__

_PACKAGES = ("torch", "torchvision", "ultralytics", "numpy", "opencv-python-headless", "onnx", "onnxruntime")


def new_run_dir(out: Path, *, model_name: str, stage: str) -> Path:
    """Create ``out/<model>_<stage>/<timestamp>``, adding a suffix rather than reusing a directory.

    The path is absolute: records name files inside it (the recommended artifact, a run's data),
    and a relative name would only resolve from the directory the run was started in.
    """
    parent = Path(out).resolve() / f"{model_name}_{stage}"
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}_{attempt}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        attach_run_log(candidate)
        return candidate
    raise RuntimeError(f"could not create a new run directory under {parent}")


RUN_LOG = "run.log"
_run_logs: list[Path] = []
_run_handlers: list[logging.Handler] = []


def attach_run_log(run_dir: Path) -> Path:
    """Send quantsweep's log (INFO and up) to ``run_dir/run.log`` as well; the CLI writes the traceback
    of an unexpected failure there."""
    path = Path(run_dir) / RUN_LOG
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("quantsweep")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    _run_logs.append(path)
    _run_handlers.append(handler)
    return path


def detach_run_logs() -> None:
    """Close the run logs of this process's runs so far (the CLI does it when a command ends, so that
    a later command in the same process does not write into them)."""
    logger = logging.getLogger("quantsweep")
    for handler in _run_handlers:
        logger.removeHandler(handler)
        handler.close()
    _run_handlers.clear()
    _run_logs.clear()


def latest_run_log() -> Path | None:
    """The log of the run directory created last in this process (None before any)."""
    return _run_logs[-1] if _run_logs else None


# instruction sets that decide which low-precision kernels a CPU runtime picks (and its float default)
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def _cpuinfo() -> tuple[str, frozenset[str]]:
    """Model name and the ``flags`` line of /proc/cpuinfo (the platform's name and no flags elsewhere)."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
    return model, flags


def cpu_flags() -> frozenset[str]:
    """Every instruction-set flag of this CPU (what ``hardware`` decides kernels' behaviour by)."""
    return _cpuinfo()[1]


def cpu_info() -> dict[str, Any]:
    """The CPU figures were measured on: model, logical cores, and the flags runtimes pick kernels by."""
    model, flags = _cpuinfo()
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "flags": [f for f in _CPU_FLAGS if f in flags],
    }


def cpu_line() -> str:
    """``AMD EPYC, 2 cores, avx512_vnni avx512_bf16``: the CPU in one line, for printed figures."""
    info = cpu_info()
    return f"{info['model']}, {info['logical_cores']} cores, {' '.join(info['flags']) or 'no VNNI/BF16/AMX'}"


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
        "cpu": cpu_info(),
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
