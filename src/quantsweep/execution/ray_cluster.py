"""The ``ray`` executor: sweep shards on a pool of Ray actors, tasks as Ray tasks.

The only module that imports Ray, and only when an executor is created. Each actor loads the model
from the checkpoint's bytes, takes the images and the driver's activation ranges from the object
store, computes the FP32 reference once, then measures shard after shard with the usual prefix
reuse. Nothing needs a shared filesystem: the driver ships the checkpoint and the letterboxed images.

A worker that dies mid-shard loses only that shard: it is queued again for another worker and a
replacement actor is started (within a budget, so a model that kills every worker ends the run).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from quantsweep.core.config import ExecutorConfig, SweepConfig
from quantsweep.core.errors import InputError
from quantsweep.data.images import Batch
from quantsweep.execution.executor import ClosingExecutor, TaskResult, run_task, worker_identity
from quantsweep.models.network import LayerInfo, set_compute_dtype
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.shards import LayerOutcome, Shard, SweepWork, auto_shard_size, measure_shard

LOG = logging.getLogger(__name__)
MAX_SHARD_ATTEMPTS = 3  # a shard whose workers died this often is a fault of the shard, not the worker


def _ray():
    try:
        import ray  # noqa: PLC0415 (optional dependency, imported only for --executor ray)
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'quantsweep[ray]'") from None
    return ray


@dataclass
class WorkerSpec:
    """Everything a sweep actor needs, put in the object store once and shared by all actors."""

    config: SweepConfig
    model_bytes: bytes
    model_suffix: str
    batch: Batch
    layers: list[LayerInfo]
    act_ranges: dict[str, Any] | None
    weights: dict[str, Any] | None  # the driver's per-layer quantizer records, shipped once

    @classmethod
    def from_work(cls, work: SweepWork) -> WorkerSpec:
        """The checkpoint file's bytes and the driver's images, layers and ranges."""
        path = Path(work.config.model)
        if not path.is_file():
            raise InputError(
                f"--executor ray needs a checkpoint file, not {work.config.model}: a model YAML is "
                "initialised at random, so every worker would build a different model"
            )
        return cls(
            config=work.config,
            model_bytes=path.read_bytes(),
            model_suffix=path.suffix,
            batch=work.engine.batch,
            layers=list(work.layers),
            act_ranges=work.act_ranges,
            # the driver's records may be on its GPU: ship them from host memory
            weights=None
            if work.weights is None
            else {f: {n: r.to("cpu") for n, r in recs.items()} for f, recs in work.weights.items()},
        )


def pin_threads(threads: int) -> None:
    """Use exactly ``threads`` torch threads: CPU sums depend on the split, so equal counts give
    bit-identical results wherever a layer is measured."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class SweepWorker:
    """A Ray actor (wrapped at run time): one model, one reference, many shards."""

    def __init__(self, spec: WorkerSpec, threads: int) -> None:
        from quantsweep.models import load_model  # noqa: PLC0415 (worker side)

        config = spec.config
        if config.device == "cpu":
            pin_threads(threads)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"model{spec.model_suffix}"
            path.write_bytes(spec.model_bytes)
            loaded = load_model(path, device=config.device, head=config.head)
        set_compute_dtype(loaded.network, config.compute_dtype)  # as the driver's engine
        self.engine = ExactSweep(
            loaded.network,
            spec.batch,
            batch_size=config.batch_size,
            detect=config.detect,
            device=config.device,
        )
        self.layers = {layer.name: layer for layer in spec.layers}
        self.act_ranges = spec.act_ranges
        self.weights = spec.weights
        self.identity = {**worker_identity(config.device), "threads": torch.get_num_threads()}

    def measure(self, shard: Shard) -> list[LayerOutcome]:
        """Every layer of ``shard``."""
        return list(
            measure_shard(
                self.engine, shard, layers=self.layers, act_ranges=self.act_ranges, weights=self.weights
            )
        )

    def whoami(self) -> dict[str, Any]:
        """Host, device, process and thread count of this actor."""
        return self.identity


def _run_remote_task(fn: Callable[[Any], Any], item: Any, index: int, device: str, threads: int):
    if device == "cpu":
        pin_threads(threads)
    return run_task(fn, item, index=index, device=device)


class RayExecutor(ClosingExecutor):
    """Shards on a pool of actors (one per GPU, or per ``threads_per_worker`` CPUs); tasks one each."""

    name = "ray"

    def __init__(self, config: ExecutorConfig) -> None:
        ray = _ray()
        self.config = config
        self._started_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=config.address, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = config.address or "a new local cluster"
                raise InputError(f"cannot start or reach Ray at {where}: {exc}") from exc
            self._started_ray = True
        self.workers_seen: list[dict[str, Any]] = []

    def worker_count(self, device: str) -> int:
        """Workers to start: as asked, else one per GPU (CUDA) or per CPU group of the cluster."""
        if self.config.workers is not None:
            return self.config.workers
        resources = _ray().cluster_resources()
        if device.startswith("cuda"):
            gpus = int(resources.get("GPU", 0))
            if not gpus:
                raise InputError("--device cuda with --executor ray, but the Ray cluster has no GPU")
            return gpus
        return max(1, int(resources.get("CPU", 1)) // self.config.threads_per_worker)

    def shard_size(self, layers: int, *, device: str = "cpu") -> int:
        """As configured, else about four shards per worker and combination."""
        if self.config.shard_layers is not None:
            return self.config.shard_layers
        return auto_shard_size(layers, workers=self.worker_count(device))

    def _actor_class(self, device: str):
        gpus = 1 if device.startswith("cuda") else 0
        return _ray().remote(num_cpus=self.config.threads_per_worker, num_gpus=gpus, max_restarts=0)(
            SweepWorker
        )

    def map_shards(self, work: SweepWork, shards: Sequence[Shard]) -> Iterator[LayerOutcome]:
        """Shards to free actors, one at a time each; a dead actor's shard goes back to the queue."""
        if not shards:
            return
        ray = _ray()
        device = work.config.device
        spec = ray.put(WorkerSpec.from_work(work))
        actor_class = self._actor_class(device)
        count = min(self.worker_count(device), len(shards))
        pool = _Pool(lambda: actor_class.remote(spec, self.config.threads_per_worker), count)
        try:
            yield from pool.run(deque(shards), on_worker=self._seen)
        finally:
            pool.close()

    def _seen(self, identity: dict[str, Any]) -> None:
        self.workers_seen.append({**identity, "ready_at": time.time()})

    def map_tasks(
        self, fn: Callable[[Any], Any], items: Sequence[Any], *, device: str = "cpu"
    ) -> Iterator[TaskResult]:
        """One Ray task per item (retried by Ray if its worker dies); results as they finish."""
        ray = _ray()
        gpus = 1 if device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=self.config.threads_per_worker, num_gpus=gpus, max_retries=3)(
            _run_remote_task
        )
        threads = self.config.threads_per_worker
        pending = [remote.remote(fn, item, index, device, threads) for index, item in enumerate(items)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def describe(self) -> dict[str, Any]:
        """Executor, cluster address and resources, and every worker that has returned a shard."""
        ray = _ray()
        return {
            "executor": self.name,
            "address": self.config.address,
            "ray_version": ray.__version__,
            "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if "node:" not in k},
            "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
            "threads_per_worker": self.config.threads_per_worker,
            "workers": self.config.workers,
            "workers_seen": list(self.workers_seen),
        }

    def close(self) -> None:
        """Disconnect, stopping the local cluster if this executor started it."""
        if self._started_ray:
            _ray().shutdown()
            self._started_ray = False


class _Pool:
    """Actors kept busy with one shard each once they are ready; dead ones replaced within a budget.

    A shard goes only to an actor that has finished starting, so an actor the cluster cannot place
    (more workers asked for than fit) never holds a shard hostage.
    """

    def __init__(self, start: Callable[[], Any], count: int) -> None:
        self.start = start
        self.idle: list[Any] = []
        self.starting: dict[Any, Any] = {}  # readiness ref -> actor
        self.in_flight: dict[Any, tuple[Any, Shard]] = {}
        self.replacements_left = 2 * count
        self.attempts: dict[int, int] = {}
        for _ in range(count):
            self._launch()

    def _launch(self) -> None:
        actor = self.start()
        self.starting[actor.whoami.remote()] = actor

    def run(self, queue: deque[Shard], *, on_worker: Callable[[dict], None]) -> Iterator[LayerOutcome]:
        """Yield every outcome of every shard in ``queue``, as shards finish."""
        ray = _ray()
        while queue or self.in_flight:
            while queue and self.idle:
                actor, shard = self.idle.pop(), queue.popleft()
                self.in_flight[actor.measure.remote(shard)] = (actor, shard)
            if not self.in_flight and not self.starting:
                raise RuntimeError("every Ray worker died; see the Ray logs of the failed actors")
            (ref,), _ = ray.wait([*self.in_flight, *self.starting], num_returns=1)
            if ref in self.starting:
                self._ready(ref, on_worker)
                continue
            actor, shard = self.in_flight.pop(ref)
            try:
                outcomes = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._lost(shard, exc, queue)
                continue
            self.idle.append(actor)
            yield from outcomes

    def _ready(self, ref: Any, on_worker: Callable[[dict], None]) -> None:
        ray = _ray()
        actor = self.starting.pop(ref)
        try:
            on_worker(ray.get(ref))
        except ray.exceptions.RayActorError as exc:
            LOG.warning("a Ray worker died while starting (%s)", exc)
            self._replace()
            return
        self.idle.append(actor)

    def _lost(self, shard: Shard, exc: Exception, queue: deque[Shard]) -> None:
        attempts = self.attempts[shard.index] = self.attempts.get(shard.index, 0) + 1
        LOG.warning("a Ray worker died measuring shard %d (%s); retrying it", shard.index, exc)
        if attempts >= MAX_SHARD_ATTEMPTS:
            raise RuntimeError(
                f"shard {shard.index} ({shard.fmt.name}, {shard.layers[0]}..) killed its worker "
                f"{attempts} times: {exc}"
            ) from exc
        queue.appendleft(shard)
        self._replace()

    def _replace(self) -> None:
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self._launch()

    def close(self) -> None:
        """Stop every actor still held (the driver's exit would, too)."""
        ray = _ray()
        for actor in [*self.idle, *self.starting.values(), *(a for a, _ in self.in_flight.values())]:
            ray.kill(actor)
        self.idle, self.starting, self.in_flight = [], {}, {}


def create(config: ExecutorConfig) -> RayExecutor:
    """Registry entry point."""
    return RayExecutor(config)
