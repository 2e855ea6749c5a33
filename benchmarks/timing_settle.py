"""Does timing models side by side in one process state what each costs alone?

    python benchmarks/timing_settle.py --run RUN_DIR [--rounds 15]

For each CPU target of a finished run, FP32 and the target's candidates (``k0``, ``k5``, ...: the
models one timing pass of ``evaluate`` visits) are timed three ways:

- **alone**: each model in a fresh child process, nothing else loaded (what a deployment runs),
  the processes taking turns over five rounds;
- **interleaved, no pause**: one process, ``timing.interleaved_latency`` with rounds visiting
  every model back to back (the timing pass before the sixteenth session);
- **interleaved, settled**: the same with ``timing.SETTLE_S`` of idle time before each visit (the
  timing pass now).

It prints FP32's median latency and every model's ratio to it. A runtime whose worker threads keep
spinning after a model returns slows the next model's first runs, so interleaving without a pause
states models slower than they run alone. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from quantsweep.core.runs import cpu_line
from quantsweep.stages.common import read_sweep_config
from quantsweep.targets import get_backend
from quantsweep.targets.timing import SETTLE_S, interleaved_latency

SUFFIX = {"ort-cpu": ".onnx", "openvino": ".xml"}
ALONE_ROUNDS = 5


def _paths(run_dir: Path, target: str) -> dict[str, Path]:
    """FP32 and the target's candidates (k0, k5, ...): the models one timing pass of evaluate visits."""
    candidates = next(run_dir.glob("*_candidates/*"))
    found = sorted((candidates / target).glob(f"k*{SUFFIX[target]}"), key=lambda p: int(p.stem[1:]))
    return {"fp32": candidates / "fp32.onnx"} | {path.stem: path for path in found}


def _child(target: str, paths: dict[str, str], *, rounds: int, imgsz: int, settle_s: float) -> dict:
    """Median milliseconds per model from one ``interleaved_latency`` pass in this process."""
    backend = get_backend(target)
    runners = {name: backend.load(Path(path)) for name, path in paths.items()}
    image = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    reference = next(iter(runners))
    timings = interleaved_latency(runners, image, reference=reference, rounds=rounds, settle_s=settle_s)
    return {name: t.median_ms for name, t in timings.items()}


def _in_child(target: str, paths: dict[str, Path], *, rounds: int, imgsz: int, settle_s: float) -> dict:
    args = [sys.executable, __file__, "--child", target, "--imgsz", str(imgsz), "--rounds", str(rounds)]
    args += ["--settle", str(settle_s)] + [f"{name}={path}" for name, path in paths.items()]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _alone(target: str, paths: dict[str, Path], *, rounds: int, imgsz: int) -> dict[str, float]:
    """Median milliseconds per model, each timed in a fresh process of its own; the processes take
    turns over ``ALONE_ROUNDS`` rounds, so the VM's drift between minutes lands on every model."""
    found: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ALONE_ROUNDS):
        for name, path in paths.items():
            one = _in_child(
                target, {name: path}, rounds=max(1, rounds // ALONE_ROUNDS), imgsz=imgsz, settle_s=0.0
            )
            found[name].append(one[name])
    return {name: statistics.median(values) for name, values in found.items()}


def _line(label: str, medians: dict[str, float]) -> str:
    ratios = "  ".join(f"{name} {ms / medians['fp32']:.3f}" for name, ms in medians.items() if name != "fp32")
    return f"  {label:<26} fp32 {medians['fp32']:6.2f} ms   x FP32: {ratios}"


def main() -> None:
    """Print the three ways of timing side by side for each CPU target of a run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--child")
    parser.add_argument("--imgsz", type=int)
    parser.add_argument("--settle", type=float)
    parser.add_argument("models", nargs="*")
    args = parser.parse_args()
    if args.child:
        paths = dict(m.split("=", 1) for m in args.models)
        found = _child(args.child, paths, rounds=args.rounds, imgsz=args.imgsz, settle_s=args.settle)
        print(json.dumps(found))
        return
    imgsz = read_sweep_config(next(args.run.glob("*_layer_sensitivity/*"))).imgsz
    print(f"run: {args.run}\nCPU: {cpu_line()}\n{args.rounds} rounds x 5 runs, {imgsz} px, batch 1")
    for target in SUFFIX:
        paths = _paths(args.run, target)
        common = {"rounds": args.rounds, "imgsz": imgsz}
        alone = _alone(target, paths, **common)
        print(f"\n{target}")
        print(_line("alone (own process)", alone))
        print(_line("interleaved, no pause", _in_child(target, paths, settle_s=0.0, **common)))
        settled = _in_child(target, paths, settle_s=SETTLE_S, **common)
        print(_line(f"interleaved, {SETTLE_S:g} s pause", settled))


if __name__ == "__main__":
    main()
