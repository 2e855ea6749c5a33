"""Deployment targets, registered by name: each says what it runs fast, writes its runtime's Q/DQ
placement, reports whether it is available here, and loads and runs artifacts.

Adding a runtime is one new module that defines a :class:`Backend` and calls :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable

from quantsweep.backends.base import Availability, Backend, ConvKind, Objective, Runner
from quantsweep.errors import InputError

_REGISTRY: dict[str, Callable[[], Backend]] = {}


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


def _register_builtin() -> None:
    from quantsweep.backends.litert_cpu import LiteRtBackend  # noqa: PLC0415
    from quantsweep.backends.openvino_cpu import OpenVinoBackend  # noqa: PLC0415
    from quantsweep.backends.ort_cpu import OrtCpuBackend  # noqa: PLC0415
    from quantsweep.backends.size import SizeBackend  # noqa: PLC0415
    from quantsweep.backends.tensorrt_gpu import TensorRtBackend  # noqa: PLC0415

    for backend in (OrtCpuBackend, OpenVinoBackend, SizeBackend, TensorRtBackend, LiteRtBackend):
        register(backend.name, backend)


_register_builtin()

__all__ = [
    "Availability",
    "Backend",
    "ConvKind",
    "Objective",
    "Runner",
    "backend_names",
    "get_backend",
    "parse_targets",
    "register",
]
