"""Deployment targets, registered by name: each says what it runs fast, writes its runtime's Q/DQ
placement, reports whether it is available here, and loads and runs artifacts.

Adding a runtime is one new module that defines a :class:`Backend` and calls :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable

from quantsweep.core.config import QuantFormat
from quantsweep.core.errors import InputError
from quantsweep.targets.base import Availability, Backend, ConvKind, Objective, Runner

_REGISTRY: dict[str, Callable[[], Backend]] = {}
# what `quantsweep run` makes when no --target is named: both CPU runtimes and the smallest file
DEFAULT_TARGETS = ("ort-cpu", "openvino", "size")


def register(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``factory`` the backend called ``name`` (``--target name``)."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    """Every registered target name."""
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; an unknown name is an input error listing the valid ones."""
    if name not in _REGISTRY:
        raise InputError(f"unknown target '{name}'; valid: {', '.join(backend_names())}")
    return _REGISTRY[name]()


def parse_targets(text: str) -> tuple[str, ...]:
    """``"ort-cpu,openvino"`` -> validated target names, in order, without repeats."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise InputError("no --target given")
    for name in names:
        get_backend(name)
    return names


def sweep_formats(names: tuple[str, ...]) -> tuple[QuantFormat, ...]:
    """The quantization formats the named targets run, in order, without repeats (what a sweep
    measures when its formats are not given)."""
    return tuple(dict.fromkeys(f for name in names for f in get_backend(name).sweep_formats()))


def _register_builtin() -> None:
    from quantsweep.targets.litert_cpu import LiteRtBackend  # noqa: PLC0415
    from quantsweep.targets.openvino_cpu import OpenVinoBackend  # noqa: PLC0415
    from quantsweep.targets.ort_cpu import OrtCpuBackend  # noqa: PLC0415
    from quantsweep.targets.size import SizeBackend  # noqa: PLC0415
    from quantsweep.targets.tensorrt_gpu import TensorRtBackend  # noqa: PLC0415

    for backend in (OrtCpuBackend, OpenVinoBackend, SizeBackend, TensorRtBackend, LiteRtBackend):
        register(backend.name, backend)


_register_builtin()

__all__ = [
    "DEFAULT_TARGETS",
    "Availability",
    "Backend",
    "ConvKind",
    "Objective",
    "Runner",
    "backend_names",
    "get_backend",
    "parse_targets",
    "register",
    "sweep_formats",
]
