"""The sweep stage: load model and images, calibrate, measure every layer, write reports."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from quantsweep.core.config import ComputeDtype, ExecutorConfig, ExecutorKind, SweepConfig, SweepMethod
from quantsweep.core.errors import InputError
from quantsweep.core.records import JsonLines, read_json, write_json
from quantsweep.core.runs import environment, file_sha256, new_run_dir
from quantsweep.data.images import Batch, fingerprint, load_batch, resolve_images
from quantsweep.execution import create_executor
from quantsweep.models import load_model
from quantsweep.models.network import enumerate_layers, set_compute_dtype
from quantsweep.quant.calibrators import write_act_ranges
from quantsweep.quant.scheme import quantize_each_alone
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.runner import SweepJob, execute, needs_act_ranges, select_layers
from quantsweep.sensitivity.screen import REFINE_STATS_IMAGES, hybrid_size, refined_layers, screen_estimates
from quantsweep.stages.common import (
    ProgressFactory,
    calibrate,
    check_device,
    no_progress,
    read_sweep_config,
)

LOG = logging.getLogger(__name__)
EXECUTORS_FILE = "executors.jsonl"


def _prepare(config: SweepConfig, run_dir: Path | None, out: Path | None) -> SweepJob:
    check_device(config.device)
    loaded = load_model(config.model, device=config.device, head=config.head)
    image_set = resolve_images(
        config.images, image_root=config.image_root, class_names=loaded.class_names
    ).subset(count=config.max_images, seed=config.seed)
    batch = load_batch(image_set, imgsz=config.imgsz)
    layers = select_layers(
        enumerate_layers(loaded.network, batch.images[:1].to(config.device)), config.layer_patterns
    )
    if run_dir is None:
        run_dir = _new_sweep_dir(config, out, model_name=loaded.name, image_set=image_set, layers=layers)
    act_ranges = None
    if needs_act_ranges(config.formats):
        act_ranges = calibrate(loaded.network, batch, config, [layer.name for layer in layers])
        write_act_ranges(run_dir, act_ranges, config.calib)
    ranked = _first(batch, config.ranked_images)  # what the layers are measured on
    weights, screen, quantizer_cost = _quantize_layers(config, loaded.network, ranked, layers, act_ranges)
    # ranges and records above come from the float32 model; only the measured passes run in half
    set_compute_dtype(loaded.network, config.compute_dtype)
    engine = ExactSweep(
        loaded.network, ranked, batch_size=config.batch_size, detect=config.detect, device=config.device
    )
    ref = engine.reference
    context = {
        "model": loaded.name,
        "images": len(image_set.paths),
        "ranked_on_images": len(ranked.images),
        "imgsz": config.imgsz,
        "method": config.method.value,
        "quantizer": {**config.quantizer.to_dict(), **quantizer_cost},
        "end_to_end": loaded.end_to_end,
        "reference": {
            "map50_95_vs_self": ref.map_vs_self.map50_95,
            "map50_95_gt": None if ref.map_gt is None else ref.map_gt.map50_95,
            "map50_gt": None if ref.map_gt is None else ref.map_gt.map50,
        },
    }
    return SweepJob(
        config=config,
        engine=engine,
        layers=layers,
        run_dir=run_dir,
        act_ranges=act_ranges,
        context=context,
        weights=weights,
        screen=screen,
    )


def _new_sweep_dir(config: SweepConfig, out: Path | None, *, model_name: str, image_set, layers) -> Path:
    """A new run directory holding the resolved config, the environment and the inputs."""
    run_dir = new_run_dir(out, model_name=model_name, stage="layer_sensitivity")
    write_json(run_dir / "config.json", "sweep_config", config.to_dict())
    write_json(run_dir / "environment.json", "environment", environment())
    inputs = {
        "model": {
            "path": str(Path(config.model).resolve()),
            "sha256": file_sha256(Path(config.model)) if Path(config.model).is_file() else None,
        },
        "images": fingerprint(image_set),
        "labels": image_set.has_labels,
        "layers": [layer.to_dict() for layer in layers],
    }
    write_json(run_dir / "inputs.json", "sweep_inputs", inputs)
    return run_dir


def _first(batch: Batch, count: int) -> Batch:
    """The first ``count`` images of ``batch`` (the seeded subset's order) with their labels."""
    labels = None if batch.labels is None else batch.labels[:count]
    return Batch(batch.images[:count], labels)


def _quantize_layers(config: SweepConfig, network, batch, layers, act_ranges):
    """Every layer the sweep measures with its weights, quantized alone by the configured method, on
    its input in the float model; returns the records, the screening estimates and their cost.

    The sweep measures one layer at a time with the rest float, so each layer's GPTQ Hessian and
    bias correction come from float inputs (docs/decisions.md); the artifacts use the sequential
    computation instead. The exact method needs every layer's records. The fast and hybrid methods
    first screen every layer with round-to-nearest weights (no calibration statistics: about 4
    forward passes), then quantize only the layers the screen ranks highest: GPTQ on every layer
    cost more than the estimate it fed (0.51 of an exact sweep's time on the testbed).
    """
    started = time.perf_counter()
    formats = [f for f in config.formats if not f.unsupported_reason()]
    images = batch.images.to(config.device)
    names = [layer.name for layer in layers]
    screen = None
    if config.method is not SweepMethod.EXACT:
        screen = screen_estimates(config, network, batch, layers, formats=formats, act_ranges=act_ranges)
    weights: dict[str, dict] = {fmt.name: {} for fmt in formats}
    for fmt in formats:
        chosen, stats_images = names, images
        if screen is not None:
            chosen = refined_layers(config, screen[fmt.name])
        if config.method is SweepMethod.FAST:  # hybrid's exact measurements use the exact sweep's records
            stats_images = images[:REFINE_STATS_IMAGES]
        records = quantize_each_alone(
            network, chosen, stats_images, formats=[fmt], config=config.quantizer, act_ranges=act_ranges
        )
        weights[fmt.name] = records[fmt.name]
    seconds = time.perf_counter() - started
    LOG.info(
        "quantized %d of %d layers x %d formats (%s) in %.1f s",
        len(next(iter(weights.values()), {})),
        len(layers),
        len(formats),
        config.quantizer.method.value,
        seconds,
    )
    return weights, screen, {"quantize_seconds": seconds}


def _check_runnable(config: SweepConfig) -> None:
    if config.formats and all(f.unsupported_reason() for f in config.formats):
        reasons = "; ".join(f"{f.name}: {f.unsupported_reason()}" for f in config.formats)
        raise InputError(f"no requested combination can be quantized ({reasons})")


def sweep(
    config: SweepConfig,
    *,
    out: Path,
    progress: ProgressFactory = no_progress,
    executor: ExecutorConfig | None = None,
) -> Path:
    """Run a new sweep under ``out`` on ``executor`` (local by default); return its run directory."""
    _check_runnable(config)
    job = _prepare(config, None, out)
    _run(job, progress, executor or ExecutorConfig())
    return job.run_dir


def resume_sweep(
    run_dir: Path,
    *,
    progress: ProgressFactory = no_progress,
    executor: ExecutorConfig | None = None,
    compute_dtype: ComputeDtype | None = None,
) -> Path:
    """Finish an interrupted sweep in place, measuring only layers without a stored result.

    Any executor may finish any run; on CPU the remaining layers are measured with the thread
    count the earlier ones were (a Ray worker's or the process's), so they are bit-identical.
    ``compute_dtype`` (when given) must be the interrupted run's: results of two dtypes never mix.
    """
    config = read_sweep_config(Path(run_dir))
    if compute_dtype is not None and ComputeDtype(compute_dtype) is not config.compute_dtype:
        raise InputError(
            f"--resume {run_dir} was swept with --compute-dtype {config.compute_dtype.value}, "
            f"not {ComputeDtype(compute_dtype).value}"
        )
    executor = _match_threads(Path(run_dir), config, executor or ExecutorConfig())
    job = _prepare(config, Path(run_dir), None)
    _run(job, progress, executor)
    return job.run_dir


def _match_threads(run_dir: Path, config: SweepConfig, executor: ExecutorConfig) -> ExecutorConfig:
    # CPU float sums depend on how work is split across threads; the recorded count makes resumed
    # layers bit-identical to the ones measured before the interruption.
    env_path = run_dir / "environment.json"
    if config.device != "cpu" or not env_path.is_file():
        return executor
    driver = read_json(env_path, "environment").get("torch_threads")
    sessions = JsonLines(run_dir / EXECUTORS_FILE).read()
    measured = driver
    if sessions and sessions[-1].get("executor") == ExecutorKind.RAY.value:
        measured = sessions[-1].get("threads_per_worker") or driver
    local = executor.kind is ExecutorKind.LOCAL
    threads = measured if local else driver  # the driver's threads also give the FP32 reference
    if threads and threads != torch.get_num_threads():
        LOG.info("using %d torch threads, as the interrupted run did", threads)
        torch.set_num_threads(threads)
    if not local and measured and measured != executor.threads_per_worker:
        LOG.info("Ray workers use %d threads, as the interrupted run's did", measured)
        return dataclasses.replace(executor, threads_per_worker=measured)
    return executor


def _run(job: SweepJob, progress: ProgressFactory, executor_config: ExecutorConfig) -> None:
    runnable = [f for f in job.config.formats if not f.unsupported_reason()]
    per_combination = len(job.layers)
    if job.config.method is SweepMethod.HYBRID:
        per_combination += min(hybrid_size(job.config), len(job.layers))
    total = len(runnable) * per_combination
    LOG.info("sweeping %d layers x %d combinations into %s", len(job.layers), len(runnable), job.run_dir)
    with create_executor(executor_config) as executor, progress(total, "sweep") as step:
        # where each session's layers were measured: a line when it starts, one when it ends
        log = JsonLines(job.run_dir / EXECUTORS_FILE)
        log.append({"event": "start", **executor.describe()})
        execute(job, on_layer=step, executor=executor)
        log.append({"event": "end", **executor.describe()})
