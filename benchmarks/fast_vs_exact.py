"""The fast and hybrid sweep methods against the exact one, as a user runs them: the sweep stage end
to end with the default quantizer (GPTQ), on each testbed, one combination at a time.

Per method: wall time of the whole ``quantsweep sweep`` stage (model load, calibration, quantizer,
FP32 reference and measurements) and its ratio to the exact sweep's, then the agreement of its
ranking with the exact ranking (Spearman rank correlation over every layer, overlap of the top 10).
Run on a quiet machine; each method runs once, exact first, on the same 16 calibration images.

    python benchmarks/fast_vs_exact.py [--model PATH ...] [--int8]

Without ``--model``: the bundled YOLOv10m and, when present, ../shared/testbed/yolov10s-shapes.pt.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, SweepConfig, SweepMethod, WeightDtype
from quantsweep.core.runs import cpu_line
from quantsweep.data.shapes import generate_split
from quantsweep.models import BUNDLED_MODEL
from quantsweep.stages.sweep_stage import sweep

SECOND_TESTBED = Path(__file__).resolve().parents[2] / "shared" / "testbed" / "yolov10s-shapes.pt"
TOP = 10


def _ranking(run_dir: Path) -> list[str]:
    (report,) = run_dir.glob("*/*/layer-sensitivity-report.json")
    return [row["name"] for row in json.loads(report.read_text())["layers"]]


def _compare(exact: list[str], other: list[str]) -> tuple[float, int]:
    position = {name: i for i, name in enumerate(other)}
    rho = spearmanr(list(range(len(exact))), [position[n] for n in exact]).statistic
    return float(rho), len(set(exact[:TOP]) & set(other[:TOP]))


def compare(model: Path, fmt: QuantFormat, images: Path, out: Path) -> None:
    """Run the three methods on one model and combination; print one table."""
    rankings, seconds = {}, {}
    for method in (SweepMethod.EXACT, SweepMethod.FAST, SweepMethod.HYBRID):
        config = SweepConfig(model=str(model), images=str(images), formats=(fmt,), method=method)
        start = time.perf_counter()
        run_dir = sweep(config, out=out / method.value)
        seconds[method] = time.perf_counter() - start
        rankings[method] = _ranking(run_dir)
    print(f"\n{model.name}, {fmt.name}, {len(rankings[SweepMethod.EXACT])} layers, 16 images at 320 px")
    print(f"{'method':8} {'seconds':>8} {'x exact':>8} {'spearman':>8} {'top10':>5}")
    for method, ranking in rankings.items():
        rho, overlap = _compare(rankings[SweepMethod.EXACT], ranking)
        ratio = seconds[method] / seconds[SweepMethod.EXACT]
        print(f"{method.value:8} {seconds[method]:8.1f} {ratio:8.3f} {rho:8.3f} {overlap:5d}")


def main() -> None:
    """Tables for every model and combination asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append")
    parser.add_argument("--int8", action="store_true", help="int8-int8/per_channel too (int4-fp16 always)")
    args = parser.parse_args()
    models = args.model or [BUNDLED_MODEL, *([SECOND_TESTBED] if SECOND_TESTBED.is_file() else [])]
    formats = [QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)]
    if args.int8:
        formats.append(QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL))
    with tempfile.TemporaryDirectory() as tmp:
        images = generate_split(Path(tmp) / "calib", split="calib", count=16, size=320, split_seed=2)
        for model in models:
            for fmt in formats:
                compare(model, fmt, images, Path(tmp) / "runs" / model.stem / fmt.name.replace("/", "_"))
    print(f"\nCPU: {cpu_line()}")


if __name__ == "__main__":
    main()
