"""The executor seam: what the sweep and the evaluation ask of wherever their work runs.

An executor measures sweep shards (:meth:`Executor.map_shards`, yielding each finished layer as it
arrives) and runs independent tasks (:meth:`Executor.map_tasks`, one per item, each result tagged
with the host and device that produced it). Callers never learn where the work ran.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

from quantsweep.sensitivity.shards import LayerOutcome, Shard, SweepWork


@dataclass(frozen=True)
class TaskResult:
    """The value ``fn(items[index])`` returned, and where and how long it ran."""

    index: int
    value: Any
    host: str
    device: str
    elapsed_s: float


def device_name(device: str = "cpu") -> str:
    """A readable name of ``device`` on this machine (the GPU's model for CUDA)."""
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415 (only workers that use a GPU need it here)

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def worker_identity(device: str = "cpu") -> dict[str, Any]:
    """Host, device and process of the calling worker (recorded with what it measured)."""
    return {"host": socket.gethostname(), "device": device_name(device), "pid": os.getpid()}


def run_task(fn: Callable[[Any], Any], item: Any, *, index: int, device: str = "cpu") -> TaskResult:
    """Run one task here and tag its result with this host and device."""
    started = time.perf_counter()
    value = fn(item)
    identity = worker_identity(device)
    return TaskResult(index, value, identity["host"], identity["device"], time.perf_counter() - started)


class Executor(Protocol):
    """Runs sweep shards and independent tasks; ``with`` closes it (and what it started)."""

    name: str

    def shard_size(self, layers: int, *, device: str = "cpu") -> int:
        """Layers per shard for a combination with ``layers`` pending layers on ``device``."""
        ...

    def map_shards(self, work: SweepWork, shards: Sequence[Shard]) -> Iterator[LayerOutcome]:
        """Measure every shard; yield each layer's outcome as soon as it reaches this process."""
        ...

    def map_tasks(
        self, fn: Callable[[Any], Any], items: Sequence[Any], *, device: str = "cpu"
    ) -> Iterator[TaskResult]:
        """``fn(item)`` for every item, one task each; results in the order they finish."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the run directory records about this executor."""
        ...

    def close(self) -> None:
        """Release workers and anything this executor started."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class ClosingExecutor:
    """Mixin: ``with executor:`` calls :meth:`close` on exit."""

    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
