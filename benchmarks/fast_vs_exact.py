"""Fast and hybrid sensitivity against the exact sweep, side by side in one run on the testbed.

For int4-fp16 and int8-int8 (per_channel), 16 calibration images at 320 px: wall time, cost in
forward-pass equivalents, Spearman rank correlation and top-10 overlap with the exact ranking, and
the mAP50-95 (first 100 val images, PyTorch fake quantization) of keeping each ranking's top 10.
Every path is timed after one untimed warm-up of its kernels (a forward pass; a 2-image estimate).
ModelOpt ``auto_quantize`` is compared by ``modelopt_compare.py``.

    python benchmarks/fast_vs_exact.py
"""

from __future__ import annotations

import time

import torch

from quantsweep.config import ActDtype, DetectConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.sweep.engine import ExactSweep
from quantsweep.sweep.fast import estimate
from testbed import compare, forward_seconds, load_testbed, top

FORMATS = (
    QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL),
    QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL),
)
TOP = 10


def main() -> None:
    bed = load_testbed()
    network, layers, calib, act_ranges = bed.network, bed.layers, bed.calib, bed.act_ranges
    names = bed.names
    forward_s = forward_seconds(network, calib.images)  # timed after one untimed warm-up pass
    # the same courtesy for the backward kernels the fast method uses: one untimed 2-image estimate
    estimate(network, type(calib)(calib.images[:2], None), layers, fmt=FORMATS[0], act_ranges=act_ranges)
    print(
        f"testbed, 16 images at 320, {len(layers)} layers, {torch.get_num_threads()} threads; "
        f"one forward pass {forward_s:.2f} s"
    )
    print("ModelOpt auto_quantize is compared by benchmarks/modelopt_compare.py (needs nvidia-modelopt)")
    for fmt in FORMATS:
        start = time.perf_counter()
        engine = ExactSweep(network, calib, batch_size=8, detect=DetectConfig())
        exact = {layer.name: engine.measure(layer, fmt, act_ranges=act_ranges).box_error for layer in layers}
        exact_s = time.perf_counter() - start
        fast = estimate(network, calib, layers, fmt=fmt, act_ranges=act_ranges)
        start = time.perf_counter()
        hybrid_top = top(fast.box_error, 2 * TOP + 10)
        info = {layer.name: layer for layer in layers}
        measured = {n: engine.measure(info[n], fmt, act_ranges=act_ranges).box_error for n in hybrid_top}
        hybrid_s = fast.seconds + time.perf_counter() - start
        hybrid = {**{n: -1.0 / (1 + fast.box_error[n]) for n in names}, **measured}  # exact ones rank first
        rows = [
            ("exact", exact, exact_s),
            ("fast", fast.box_error, fast.seconds),
            ("hybrid", hybrid, hybrid_s),
        ]
        print(f"\n{fmt.name}")
        header = ("method", "seconds", "fwd-equiv", "spearman", "top10", "top10-kept mAP50-95")
        print(f"{header[0]:8} {header[1]:>8} {header[2]:>9} {header[3]:>8} {header[4]:>5} {header[5]:>20}")
        for label, scores, seconds in rows:
            rho, overlap, kept_map = compare(bed, fmt, exact, scores)
            cost = seconds / forward_s
            print(f"{label:8} {seconds:8.1f} {cost:9.1f} {rho:8.3f} {overlap:5d} {kept_map:20.4f}")


if __name__ == "__main__":
    main()
