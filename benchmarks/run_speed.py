"""``quantsweep run`` with no arguments, the way it runs now and the way it ran before, in one run.

Before: the exact sweep (``run``'s default until it switched to ``--method hybrid``) and every
stage after the sweep loading the model, calibrating and exporting the FP32 ONNX for itself (the
schemes stage once per swept combination, then materialize), as a stage run alone still does. Now:
``run``'s defaults, the hybrid sweep and one load, calibration and export handed from stage to
stage (``RunCache``). Both paths run the whole job on the bundled default into their own run
directory, old path first; the script prints each wall time, the time of each stage, the ratio
now / before, and checks that every target's recommendation (the scheme, its kept layers, its mAP
and size; not its latency, which is timed anew) is the same.

``--loads-only`` runs ``run``'s defaults on both sides, so that only the one-load change differs.

    python benchmarks/run_speed.py [--out DIR] [--loads-only]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from quantsweep.cli.main import build_parser
from quantsweep.cli.run import run_config
from quantsweep.core.records import read_json
from quantsweep.workflow import run_job

SAME = ("recommended", "kept_layers", "map50_95", "reference_map50_95", "size_bytes")


def recommendations(eval_dir: Path) -> dict[str, dict]:
    """Each target's recommendation, limited to what must not change between the two paths."""
    found = {}
    for path in sorted((eval_dir / "results").glob("*/recommendation.json")):
        record = read_json(path, "recommendation")
        found[path.parent.name] = {key: record.get(key) for key in SAME}
    return found


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds from each stage's directory to the next one's (the last: to its newest file)."""
    order = ("layer_sensitivity", "schemes", "candidates", "evaluate")  # ties: same second
    dirs = [(d, d.parent.name.split("_", 1)[1]) for d in run_dir.glob("*_*/*")]
    starts = sorted((_created(d), order.index(stage), stage) for d, stage in dirs)
    ends = [t for t, _, _ in starts[1:]] + [max(f.stat().st_mtime for f in run_dir.rglob("*") if f.is_file())]
    found: dict[str, float] = {}
    for (start, _, stage), end in zip(starts, ends, strict=True):
        found[stage] = round(found.get(stage, 0.0) + end - start, 1)
    return found


def _created(directory: Path) -> float:
    """When a stage directory was made: its name is its start time to the second."""
    return time.mktime(time.strptime(directory.name, "%Y-%m-%d_%H-%M-%S"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="where the two runs go (default: a temporary folder)")
    parser.add_argument("--loads-only", action="store_true", help="run's defaults on both sides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        seconds, found = {}, {}
        before = ["run"] if args.loads_only else ["run", "--method", "exact"]
        paths = (
            (f"before ({' '.join(before)}, each stage loads for itself)", before, False),
            ("now (run's defaults, one load)", ["run"], True),
        )
        for label, argv, share in paths:
            config = run_config(build_parser().parse_args(argv))
            start = time.perf_counter()
            eval_dir = run_job(config, out=out / ("shared" if share else "alone"), share_loads=share)
            seconds[label] = time.perf_counter() - start
            found[label] = recommendations(eval_dir)
            print(f"{label}: {seconds[label]:.1f} s  ({eval_dir})", flush=True)
            print(f"  stages: {stage_seconds(eval_dir.parent.parent)}", flush=True)
        before, now = seconds.values()
        print(f"quantsweep run, no arguments: now / before = {now / before:.3f}")
        first, second = found.values()
        for target in sorted(set(first) | set(second)):
            same = first.get(target) == second.get(target)
            print(f"{target}: {'same recommendation' if same else 'DIFFERENT'}: {second.get(target)}")
            if not same:
                print(f"  before: {first.get(target)}")


if __name__ == "__main__":
    main()
