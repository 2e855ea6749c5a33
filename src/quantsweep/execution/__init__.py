"""Executors by name: ``local`` (this process, the default) and ``ray`` (a Ray cluster).

Each executor lives in its own module and is imported only when asked for, so the local path never
imports Ray (``quantsweep.execution.ray_cluster`` is the only module that does).
"""

from __future__ import annotations

import importlib

from quantsweep.core.config import ExecutorConfig, ExecutorKind
from quantsweep.execution.executor import Executor, TaskResult

_MODULES = {
    ExecutorKind.LOCAL: "quantsweep.execution.local",
    ExecutorKind.RAY: "quantsweep.execution.ray_cluster",
}

__all__ = ["Executor", "TaskResult", "create_executor"]


def create_executor(config: ExecutorConfig | None = None) -> Executor:
    """The executor ``config`` names (local when None); use it in a ``with`` block."""
    config = config or ExecutorConfig()
    return importlib.import_module(_MODULES[config.kind]).create(config)
