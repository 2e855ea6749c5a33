"""Every GPU check of the project in one prepared run on a CUDA machine, and its CPU counterpart.

    PYTHONUNBUFFERED=1 python benchmarks/gpu.py --out DIR [--budget-s 400]

Each step runs on its own (a step that fails prints its error and the next one runs) while the
time budget lasts; every figure is printed, and the box errors go to DIR/gpu_sweep.json.

1. Environment: GPU, torch and CUDA versions, ONNX Runtime providers, TensorRT (or why not).
2. Sweep cost on CUDA, testbed at 320 px, 16 calibration images, every conv, int4-fp16 and
   int8-int8 per channel, computed in float32 and in float16: one forward pass, the exact sweep
   and its cost ratio (sweep seconds / (layers x one forward pass)), the naive method on 10
   layers, the fast estimator (seconds; Spearman and top-10 overlap with the float32 exact ranking).
3. The exact int4-fp16 sweep at 640 px over 128 images.
4. The CLI on CUDA: ``quantsweep sweep --device cuda`` (the default targets' combinations, GPTQ
   weights, exact), then ``quantsweep run --device cuda --target ort-cpu,size``: wall times.
5. TensorRT engines (``gpu_engines.py``), only when ``import tensorrt`` works.

    python benchmarks/gpu.py --compare DIR/gpu_sweep.json

on a CPU machine measures the same exact sweeps on the CPU and prints how the CUDA rankings agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from scipy.stats import spearmanr

from quantsweep.core.config import ActDtype, ComputeDtype, DetectConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.data.shapes import generate_split
from quantsweep.models.network import set_compute_dtype
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.fast import estimate
from testbed import CALIB_IMAGES, IMGSZ, Testbed, forward_seconds, load_testbed, naive_per_layer, top

FORMATS = (
    QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL),
    QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL),
)
NAIVE_SAMPLE = 10


def environment() -> None:
    """What the machine is: GPU, versions, runtimes."""
    print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    else:
        print("GPU: none visible to torch")
    import onnxruntime  # noqa: PLC0415

    print(f"onnxruntime {onnxruntime.__version__}: {onnxruntime.get_available_providers()}")
    # PyTorch's default: cuDNN convolutions in TF32 (what a user's `--device cuda` sweep gets)
    print(f"cudnn allow_tf32 {torch.backends.cudnn.allow_tf32}, threads {torch.get_num_threads()}")
    for name in ("tensorrt", "modelopt", "ray", "openvino"):
        print(f"{name}: {'importable' if importlib.util.find_spec(name) else 'not installed'}")


def _forward_seconds(engine: ExactSweep, *, repeats: int = 5) -> float:
    """One full forward pass over the engine's images, already on its device and in its dtype."""
    images = torch.cat(engine.chunks)
    return forward_seconds(engine.network, images, batch_size=len(engine.chunks[0]), repeats=repeats)


def exact_sweep(engine: ExactSweep, bed: Testbed, fmt: QuantFormat) -> tuple[dict[str, float], float]:
    """Box error of every layer alone, and the seconds it took."""
    start = time.perf_counter()
    # each box error is a Python float, read back from the device: the loop ends when the GPU does
    errors = {x.name: engine.measure(x, fmt, act_ranges=bed.act_ranges).box_error for x in bed.layers}
    return errors, time.perf_counter() - start


def sweep_costs(bed: Testbed, *, device: str, dtype: ComputeDtype, results: dict) -> None:
    """Step 2 for one compute dtype: forward, exact, naive and fast on both formats."""
    set_compute_dtype(bed.network, dtype)  # float16: every block but the head (statistics stay float32)
    engine = ExactSweep(bed.network, bed.calib, batch_size=8, detect=DetectConfig(), device=device)
    forward_s = _forward_seconds(engine)
    print(f"\n{device} {dtype.value}: one forward pass over 16 images {forward_s * 1000:.1f} ms")
    print("format | exact s | cost ratio | naive s/layer | fast s | fast spearman | fast top10")
    for fmt in FORMATS:
        exact, exact_s = exact_sweep(engine, bed, fmt)
        naive_s = naive_per_layer(engine, bed.layers, fmt, act_ranges=bed.act_ranges, sample=NAIVE_SAMPLE)
        kwargs = {"fmt": fmt, "act_ranges": bed.act_ranges, "device": device}
        estimate(bed.network, type(bed.calib)(bed.calib.images[:2], None), bed.layers, **kwargs)
        fast = estimate(bed.network, bed.calib, bed.layers, **kwargs)  # after a 2-image warm-up
        reference = results.get(f"{fmt.name} float32 exact", exact)
        rho = spearmanr([reference[n] for n in bed.names], [fast.box_error[n] for n in bed.names]).statistic
        overlap = len(set(top(fast.box_error)) & set(top(reference)))
        ratio = exact_s / (len(bed.layers) * forward_s)
        print(
            f"{fmt.name} | {exact_s:.1f} | {ratio:.2f} | {naive_s:.3f} | {fast.seconds:.1f} "
            f"| {rho:.3f} | {overlap}"
        )
        results[f"{fmt.name} {dtype.value} exact"] = exact
        results[f"{fmt.name} {dtype.value} fast"] = fast.box_error
    if dtype is ComputeDtype.FLOAT16:
        for fmt in FORMATS:
            ref, half = results[f"{fmt.name} float32 exact"], results[f"{fmt.name} float16 exact"]
            rho = spearmanr([ref[n] for n in bed.names], [half[n] for n in bed.names]).statistic
            print(
                f"{fmt.name}: float16 exact vs float32 exact: Spearman {rho:.4f}, "
                f"top-10 overlap {len(set(top(half)) & set(top(ref)))}"
            )


def large_sweep(device: str) -> None:
    """Step 3: the exact int4-fp16 sweep at 640 px over 128 images."""
    bed = load_testbed(device=device, imgsz=640, calib_images=128)
    engine = ExactSweep(bed.network, bed.calib, batch_size=16, detect=DetectConfig(), device=device)
    forward_s = _forward_seconds(engine, repeats=3)
    _, seconds = exact_sweep(engine, bed, FORMATS[0])
    print(
        f"\n640 px, 128 images, {len(bed.layers)} layers, int4-fp16 exact: {seconds:.1f} s "
        f"({seconds / len(bed.layers):.2f} s/layer; one forward pass {forward_s:.2f} s; "
        f"cost ratio {seconds / (len(bed.layers) * forward_s):.2f})"
    )


def cli_on_cuda(out: Path, *, deadline: float, device: str = "cuda") -> None:
    """Step 4: the sweep and the whole run through the CLI on CUDA, wall times."""
    calib = generate_split(out / "data", split="calib", count=CALIB_IMAGES, size=IMGSZ, split_seed=2)
    commands = {
        "sweep (exact, default targets' combinations, GPTQ)": ["sweep", "--images", str(calib)],
        "run --target ort-cpu,size": ["run", "--target", "ort-cpu,size"],
    }
    for label, argv in commands.items():
        left = deadline - time.time()
        if left < 60:
            print(f"skipped {label}: {left:.0f} s of the budget left")
            continue
        command = [sys.executable, "-m", "quantsweep.cli.main", *argv, "--device", device, "--out", str(out)]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, check=False, timeout=left, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            print(f"quantsweep {label} on {device}: stopped at the budget after {left:.0f} s")
            continue
        seconds = time.perf_counter() - start
        print(f"\nquantsweep {label} on {device}: {seconds:.1f} s, exit {done.returncode}")
        print("\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))


def _step(label: str, deadline: float, action) -> None:
    if time.time() > deadline:
        print(f"\n== {label}: skipped, the time budget is spent")
        return
    print(f"\n== {label}", flush=True)
    start = time.perf_counter()
    try:
        action()
    except Exception:  # one failing step must not hide the others' figures
        traceback.print_exc(file=sys.stdout)
    print(f"== {label}: {time.perf_counter() - start:.1f} s", flush=True)


def on_gpu(out: Path, *, budget_s: float, device: str = "cuda", layers: int | None = None) -> None:
    """Steps 1-5 on ``device``; ``layers`` (first N only) and a CPU device make a smoke run."""
    deadline = time.time() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    _step("environment", deadline, environment)
    bed = load_testbed(device=device)
    bed.layers = bed.layers[:layers]

    def costs() -> None:
        for dtype in (ComputeDtype.FLOAT32, ComputeDtype.FLOAT16):
            sweep_costs(bed, device=device, dtype=dtype, results=results)
            (out / "gpu_sweep.json").write_text(json.dumps(results))

    _step(f"sweep cost on {device} at 320 px", deadline, costs)
    _step(f"CLI on {device}", deadline, lambda: cli_on_cuda(out / "runs", deadline=deadline, device=device))
    if device.startswith("cuda"):
        _step("exact sweep at 640 px", deadline, lambda: large_sweep(device))
    if importlib.util.find_spec("tensorrt") is None:
        print("\n== TensorRT engines: not run, the tensorrt package is not installed here")
    else:
        from gpu_engines import tensorrt_engines  # noqa: PLC0415 (needs tensorrt)

        run = [sys.executable, "-m", "quantsweep.cli.main", "run", "--target", "tensorrt"]
        run += ["--device", "cuda", "--out", str(out / "trt")]
        _step("TensorRT run", deadline, lambda: subprocess.run(run, check=False))
        _step("TensorRT engines", deadline, lambda: tensorrt_engines(next((out / "trt").glob("*_run/*"))))


def compare(path: Path) -> None:
    """The same exact sweeps on this machine's CPU, against the CUDA results in ``path``."""
    cuda = json.loads(path.read_text())
    bed = load_testbed()
    engine = ExactSweep(bed.network, bed.calib, batch_size=8, detect=DetectConfig())
    for fmt in FORMATS:
        cpu, seconds = exact_sweep(engine, bed, fmt)
        print(f"\n{fmt.name}: CPU exact sweep {seconds:.1f} s")
        for key in (f"{fmt.name} float32 exact", f"{fmt.name} float16 exact"):
            if key not in cuda:
                continue
            other = cuda[key]
            rho = spearmanr([cpu[n] for n in bed.names], [other[n] for n in bed.names]).statistic
            worst = max(abs(other[n] - cpu[n]) / max(cpu[n], 1e-9) for n in bed.names)
            overlap = len(set(top(other)) & set(top(cpu)))
            print(f"  CPU vs CUDA {key}: Spearman {rho:.4f}, top-10 {overlap}, max rel diff {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs-gpu"))
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip the steps left after this")
    parser.add_argument("--compare", type=Path, help="gpu_sweep.json of a CUDA run: measure on the CPU")
    parser.add_argument("--smoke-cpu-layers", type=int, help="check the script on the CPU, N layers")
    args = parser.parse_args()
    if args.compare is not None:
        compare(args.compare)
    elif args.smoke_cpu_layers:
        on_gpu(args.out, budget_s=args.budget_s, device="cpu", layers=args.smoke_cpu_layers)
    elif not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU: torch.cuda.is_available() is false here", file=sys.stderr)
        sys.exit(2)
    else:
        on_gpu(args.out, budget_s=args.budget_s)


if __name__ == "__main__":
    main()
