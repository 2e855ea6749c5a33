"""The default executor: everything in this process, exactly as a sweep ran before executors existed.

One shard per combination, measured by the driver's own engine, each layer yielded as it finishes,
so the local path has the same order, thread count and cost as the plain loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from quantsweep.core.config import ExecutorConfig
from quantsweep.execution.executor import ClosingExecutor, TaskResult, run_task
from quantsweep.sensitivity.shards import LayerOutcome, Shard, SweepWork, measure_shard


class LocalExecutor(ClosingExecutor):
    """Runs shards and tasks in the calling process, one after another."""

    name = "local"

    def shard_size(self, layers: int, *, device: str = "cpu") -> int:
        """The whole combination: splitting gains nothing in one process."""
        del device  # the same for every device
        return max(1, layers)

    def map_shards(self, work: SweepWork, shards: Sequence[Shard]) -> Iterator[LayerOutcome]:
        """Measure shard after shard with the driver's engine."""
        info = {layer.name: layer for layer in work.layers}
        for shard in shards:
            yield from measure_shard(
                work.engine, shard, layers=info, act_ranges=work.act_ranges, weights=work.weights
            )

    def map_tasks(
        self, fn: Callable[[Any], Any], items: Sequence[Any], *, device: str = "cpu"
    ) -> Iterator[TaskResult]:
        """A plain loop, in item order."""
        for index, item in enumerate(items):
            yield run_task(fn, item, index=index, device=device)

    def describe(self) -> dict[str, Any]:
        """Local runs need no more than the environment record already says."""
        return {"executor": self.name}


def create(config: ExecutorConfig) -> LocalExecutor:
    """Registry entry point."""
    del config  # nothing to configure
    return LocalExecutor()
