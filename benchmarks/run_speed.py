"""``quantsweep run`` with no arguments, the way it runs now and the way it ran before, in one run.

Before, each stage after the sweep loaded the model, calibrated and exported the FP32 ONNX for
itself (the schemes stage once per swept combination, then materialize), as a stage run alone still
does; now ``run`` loads, calibrates and exports once and hands them on (``RunCache``). Both paths
run the whole job on the bundled default into their own run directory, old path first; the script
prints each wall time, the ratio now / before, and checks that every target's recommendation (the
scheme, its kept layers and its mAP; not its latency, which is timed anew) is the same.

    python benchmarks/run_speed.py [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from quantsweep.cli.main import build_parser
from quantsweep.cli.run import run_config
from quantsweep.records import read_json
from quantsweep.workflow import run_job

SAME = ("recommended", "kept_layers", "map50_95", "reference_map50_95", "size_bytes")


def recommendations(eval_dir: Path) -> dict[str, dict]:
    """Each target's recommendation, limited to what must not change between the two paths."""
    found = {}
    for path in sorted((eval_dir / "results").glob("*/recommendation.json")):
        record = read_json(path, "recommendation")
        found[path.parent.name] = {key: record.get(key) for key in SAME}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="where the two runs go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        seconds, found = {}, {}
        for label, share in (("before (each stage loads for itself)", False), ("now (one load)", True)):
            config = run_config(build_parser().parse_args(["run"]))
            start = time.perf_counter()
            eval_dir = run_job(config, out=out / ("shared" if share else "alone"), share_loads=share)
            seconds[label] = time.perf_counter() - start
            found[label] = recommendations(eval_dir)
            print(f"{label}: {seconds[label]:.1f} s  ({eval_dir})", flush=True)
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
