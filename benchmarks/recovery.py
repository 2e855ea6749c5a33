"""What each accuracy-recovery method buys with nothing kept in float, and what it costs.

    python benchmarks/recovery.py --model M.pt --images calib.txt --data data.yaml \\
        [--imgsz 320] [--max-images 16] [--recovery none,distill] [--targets ort-cpu,openvino]

For each recovery method, one ``quantsweep run --ks 0 --recovery METHOD`` on the model (the
default quantizer otherwise: GPTQ, bias correction, MSE ranges), then per target the ``k0``
artifact's mAP50-95 as its own runtime scores it (labels of ``--data``), the FP32 model's on the
same runtime, the seconds the recovery took per format (``quantized_weights/costs.json``) and the
run's peak resident memory. Runs one after another; run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from quantsweep.core.runs import cpu_line


def _one(run_root: Path) -> Path:
    (found,) = sorted(run_root.glob("*_run/*"))
    return found


def _scores(run_dir: Path, target: str) -> tuple[float, float]:
    (evaluate,) = sorted(run_dir.glob("*_evaluate/*"))
    models = evaluate / "results" / target / "models"
    read = lambda name: json.loads((models / f"{name}.json").read_text())["score"]  # noqa: E731
    return read("k0"), read("fp32")


def _costs(run_dir: Path) -> dict:
    (costs,) = sorted(run_dir.glob("*_candidates/*/quantized_weights/costs.json"))
    return json.loads(costs.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--max-images", type=int, default=16, help="calibration images used")
    parser.add_argument("--recovery", default="none,distill")
    parser.add_argument("--targets", default="ort-cpu,openvino")
    parser.add_argument("--out", type=Path, default=Path("runs/recovery_benchmark"))
    args = parser.parse_args()
    targets = args.targets.split(",")
    rows = []
    for method in args.recovery.split(","):
        out = args.out / f"{Path(args.model).stem}_{args.imgsz}_{args.max_images}_{method}"
        command = [
            sys.executable, "-m", "quantsweep.cli.main", "run", "--model", args.model,
            "--images", args.images, "--data", args.data, "--imgsz", str(args.imgsz),
            "--max-images", str(args.max_images),
            "--target", args.targets, "--ks", "0", "--recovery", method, "--out", str(out),
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        run_dir = _one(out)
        costs = _costs(run_dir)
        recovery_s = sum(costs.get("recovery_seconds_per_format", {}).values())
        rows.append((method, {t: _scores(run_dir, t) for t in targets}, recovery_s, seconds, peak_mib))
    print(f"\n{Path(args.model).name}, {args.imgsz} px, {args.max_images} images of {args.images}")
    print(f"CPU: {cpu_line()}")
    print("k0 = every conv quantized, nothing kept in float; mAP50-95 from each target's own runtime")
    header = " ".join(f"{t + ' k0 (% FP32)':>26}" for t in targets)
    print(f"{'recovery':<10} {header} {'recovery s':>11} {'run s':>7} {'peak MiB*':>10}")
    for method, scores, recovery_s, seconds, peak in rows:
        cells = " ".join(f"{k0:>17.4f} ({k0 / fp32:6.1%})" for k0, fp32 in scores.values())
        print(f"{method:<10} {cells} {recovery_s:>11.1f} {seconds:>7.1f} {peak:>10.0f}")
    print("* peak resident memory of any run so far in this benchmark (runs go in the order listed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
