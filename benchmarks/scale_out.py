"""Scale-out: the same sweep shards on 2 single-threaded Ray workers vs 1, and the local executor vs
the plain loop it replaced, measured side by side in one run.

Prints  wall(2 workers) / wall(1 worker)  (the issue asks for <= 0.65 on a 2-core machine; each
wall time includes starting the workers, which load the model and compute the FP32 reference), and
local executor / plain ``engine.measure`` loop on the same layers and threads (should be ~1.00).
All runs must give bit-identical box errors; the script says so or stops.

    python benchmarks/scale_out.py [--layers N] [--shard-layers S] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import time

import ray
import torch

from quantsweep.core.config import (
    ActDtype,
    DetectConfig,
    ExecutorConfig,
    ExecutorKind,
    Granularity,
    QuantFormat,
    SweepConfig,
    WeightDtype,
)
from quantsweep.execution.local import LocalExecutor
from quantsweep.execution.ray_cluster import RayExecutor
from quantsweep.models import BUNDLED_MODEL
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.shards import SweepWork, auto_shard_size, plan_shards
from testbed import CALIB_IMAGES, IMGSZ, forward_seconds, load_testbed

FMT = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)


def _timed_ray(work: SweepWork, shards, *, workers: int) -> tuple[float, float, dict[str, float], list]:
    """(wall seconds with worker start, seconds after the last worker was ready, box errors, workers)."""
    config = ExecutorConfig(kind=ExecutorKind.RAY, workers=workers, threads_per_worker=1)
    executor = RayExecutor(config)
    start = time.time()
    errors = {o.layer: o.result.box_error for o in executor.map_shards(work, shards)}
    end = time.time()
    ready = max(w["ready_at"] for w in executor.workers_seen)
    return end - start, end - ready, errors, executor.workers_seen


def _timed_local(work: SweepWork, names: list[str]) -> tuple[float, float, dict, dict]:
    """(plain loop seconds, local executor seconds, their box errors), plain loop first."""
    info = {layer.name: layer for layer in work.layers}
    start = time.perf_counter()
    plain = {n: work.engine.measure(info[n], FMT).box_error for n in names}
    plain_s = time.perf_counter() - start
    (shard,) = plan_shards([(FMT, names)], size=LocalExecutor().shard_size(len(names)))
    start = time.perf_counter()
    local = {o.layer: o.result.box_error for o in LocalExecutor().map_shards(work, [shard])}
    return plain_s, time.perf_counter() - start, plain, local


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, help="only the first N layers (default: all)")
    parser.add_argument("--shard-layers", type=int, help="layers per shard (default: ~4 per worker of 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-local", action="store_true", help="only the Ray comparison")
    args = parser.parse_args()

    bed = load_testbed()
    layers = bed.layers[: args.layers] if args.layers else bed.layers
    names = [layer.name for layer in layers]
    config = SweepConfig(model=str(BUNDLED_MODEL), images="-", imgsz=IMGSZ, max_images=CALIB_IMAGES)
    engine = ExactSweep(bed.network, bed.calib, batch_size=8, detect=DetectConfig(), device=args.device)
    work = SweepWork(config=config, engine=engine, layers=layers, act_ranges=bed.act_ranges)
    size = args.shard_layers or auto_shard_size(len(names), workers=2)
    shards = plan_shards([(FMT, names)], size=size)
    print(f"testbed YOLOv10m, {CALIB_IMAGES} images at {IMGSZ}, {len(names)} layers, {FMT.name}")

    if not args.skip_local:
        forward_s = forward_seconds(bed.network, bed.calib.images)
        plain_s, local_s, plain, local = _timed_local(work, names)
        assert plain == local, "local executor and plain loop disagree"
        threads = torch.get_num_threads()
        print(f"one forward pass over the images ({threads} threads): {forward_s:.3f} s")
        print(f"plain loop {plain_s:.1f} s, local executor {local_s:.1f} s ({threads} threads, identical)")
        print(
            f"sweep ratio: plain {plain_s / (len(names) * forward_s):.2f}, "
            f"local executor {local_s / (len(names) * forward_s):.2f} (README figure 0.40)"
        )
        print(f"local executor / plain loop = {local_s / plain_s:.2f}  (target ~1.00)")

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        one_s, one_run_s, one, _ = _timed_ray(work, shards, workers=1)
        two_s, two_run_s, two, seen = _timed_ray(work, shards, workers=2)
    finally:
        ray.shutdown()
    assert one == two, "1 and 2 Ray workers disagree"
    print(f"{len(shards)} shards of <= {size} layers; workers: {[(w['host'], w['pid']) for w in seen]}")
    print(f"1 Ray worker (1 thread): {one_s:.1f} s; 2 Ray workers (1 thread each): {two_s:.1f} s, identical")
    print(f"  of which after the workers were ready: {one_run_s:.1f} s and {two_run_s:.1f} s")
    print(
        f"scale-out ratio 2 workers / 1 = {two_s / one_s:.2f}  (target <= 0.65; wall, worker start included)"
    )
    print(f"scale-out ratio once workers are ready = {two_run_s / one_run_s:.2f}")


if __name__ == "__main__":
    main()
