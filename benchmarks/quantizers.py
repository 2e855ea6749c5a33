"""Weight methods and activation calibrators side by side on the testbed, scored on ONNX artifacts.

Testbed YOLOv10m at 320 px; statistics from the 16 calibration images (split seed 2), mAP50-95
against labels on the first 100 val images, each model written by quantsweep's QDQ writer from
the same records Torch simulates and run in ONNX Runtime (CPU). Each quantization pass is timed
and its peak memory sampled (resident set above the level before it, every 10 ms).

    python benchmarks/quantizers.py int4        # INT4 weight-only: rtn / mse / gptq (+ bias correction)
    python benchmarks/quantizers.py w8a8        # INT8 / UINT8 activations x max / percentile / mse / entropy
    python benchmarks/quantizers.py w4a8 --calib max   # INT4 weights with INT8 / UINT8 activations
    python benchmarks/quantizers.py w4a8-search        # int4-int8: fewest top-ranked convs kept for 99%
    python benchmarks/quantizers.py int4 w8a8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from quantsweep.core.config import (
    ActDtype,
    CalibConfig,
    CalibMethod,
    DetectConfig,
    Granularity,
    QuantFormat,
    WeightDtype,
    WeightMethod,
    WeightQuantConfig,
    WeightSymmetry,
)
from quantsweep.evaluation.scoring import detections_of, load_checked
from quantsweep.metrics.map import mean_average_precision
from quantsweep.onnx_graph.export import export_fp32, map_layers
from quantsweep.onnx_graph.placement import Placement, apply_placement, input_ranges
from quantsweep.quant.apply import calibrate_inputs
from quantsweep.quant.layer_quant import quantize_layer
from quantsweep.quant.scheme import quantize_each_alone, quantize_scheme
from quantsweep.schemes.scheme_records import Precision
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.targets import get_backend
from testbed import IMGSZ, Testbed, load_testbed, top

DFL = "model.23.dfl.conv"
INT4 = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)
AUTO, SYM = WeightSymmetry.AUTO, WeightSymmetry.SYMMETRIC
# (label, config, sequential): sequential = statistics from the partly quantized model (artifacts)
INT4_METHODS = (
    ("rtn symmetric (before)", WeightQuantConfig(WeightMethod.RTN, SYM, bias_correction=False), True),
    ("rtn auto + bias corr.", WeightQuantConfig(WeightMethod.RTN, AUTO, bias_correction=True), True),
    ("mse auto", WeightQuantConfig(WeightMethod.MSE, AUTO, bias_correction=False), True),
    ("gptq auto, float inputs", WeightQuantConfig(WeightMethod.GPTQ, AUTO, bias_correction=False), False),
    ("gptq auto", WeightQuantConfig(WeightMethod.GPTQ, AUTO, bias_correction=False), True),
    ("gptq auto + bias corr.", WeightQuantConfig(WeightMethod.GPTQ, AUTO, bias_correction=True), True),
)


class PeakMemory:
    """Peak resident memory above the starting level, sampled every 10 ms in a thread."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.01)

    def __exit__(self, *_exc) -> None:
        self.running = False
        self.thread.join()

    @property
    def mib(self) -> float:
        """Peak growth in MiB."""
        return (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measured(fn: Callable[[], dict]) -> tuple[dict, float, float]:
    """(result, seconds, peak MiB) of one quantization pass."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
    return result, seconds, memory.mib


class Scorer:
    """Writes artifacts with the QDQ writer and scores them in ONNX Runtime on the val images."""

    def __init__(self, bed: Testbed, directory: Path) -> None:
        self.bed, self.directory = bed, directory
        self.fp32 = export_fp32(bed.network, imgsz=IMGSZ, path=directory / "fp32.onnx")
        self.nodes = map_layers(self.fp32, bed.network.module, bed.layers).nodes

    def score(self, assignment: dict[str, QuantFormat], *, records=None, ranges=None) -> float:
        plan = {
            self.nodes[n]: Precision(f.weight, f.act, f.granularity, f.int4_block_size)
            for n, f in assignment.items()
        }
        found = input_ranges(
            self.fp32, {self.nodes[n]: ranges[n] for n, f in assignment.items() if f.act is not ActDtype.FP16}
        )
        weights = {self.nodes[n]: r for n, r in (records or {}).items() if n in assignment}
        path = self.directory / "trial.onnx"
        written = apply_placement(  # the writer that ships, Q/DQ on inputs and weights
            self.fp32,
            plan,
            ranges=lambda tensors: {t: found[t] for t in tensors},
            placement=Placement(),
            weights=weights,
        )
        onnx.save(written, str(path))
        detector = load_checked(get_backend("ort-cpu"), path, imgsz=IMGSZ)
        return mean_average_precision(
            detections_of(detector, self.bed.val, DetectConfig()), self.bed.val.labels
        ).map50_95


def int4_rows(bed: Testbed, scorer: Scorer, *, only: str | None = None) -> list[dict]:
    """INT4 weight-only, per channel: every method (or those whose label contains ``only``)."""
    assignment = dict.fromkeys(bed.names, INT4)
    rows = []
    for label, config, sequential in INT4_METHODS:
        if only and only not in label:
            continue
        if sequential:
            run = lambda c=config: quantize_scheme(bed.network, assignment, bed.calib.images, config=c)  # noqa: E731
        else:
            run = lambda c=config: quantize_each_alone(  # noqa: E731
                bed.network, bed.names, bed.calib.images, formats=[INT4], config=c
            )[INT4.name]
        records, seconds, mib = measured(run)
        all_q = scorer.score(assignment, records=records)
        dfl_kept = scorer.score({n: f for n, f in assignment.items() if n != DFL}, records=records)
        rows.append(
            {
                "method": label,
                "seconds": seconds,
                "peak_mib": mib,
                "nothing_kept": all_q,
                "dfl_kept": dfl_kept,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def w8a8_weights(bed: Testbed, method: WeightMethod) -> tuple[dict, float]:
    """Symmetric INT8 per-channel records judged by weight error (no calibration pass), and their time."""
    fmt = QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL)
    config = WeightQuantConfig(method, SYM, bias_correction=False)
    started = time.perf_counter()
    module = bed.network.module
    records = {n: quantize_layer(module.get_submodule(n), fmt, config=config) for n in bed.names}
    return records, time.perf_counter() - started


def w8a8_rows(bed: Testbed, scorer: Scorer, *, method: WeightMethod) -> list[dict]:
    """W8A8 (INT8 per-channel weights) with signed and unsigned activations, every calibrator."""
    records, weight_seconds = w8a8_weights(bed, method)
    rows = []
    for calib in CalibMethod:
        ranges, calib_s, calib_mib = measured(
            lambda m=calib: calibrate_inputs(
                bed.network.module, bed.names, _drive(bed), calib=CalibConfig(method=m)
            )
        )
        for act in (ActDtype.INT8, ActDtype.UINT8):
            assignment = dict.fromkeys(bed.names, QuantFormat(WeightDtype.INT8, act, Granularity.PER_CHANNEL))
            row = {
                "act": act.value,
                "calib": calib.value,
                "weights": method.value,
                "weights_seconds": weight_seconds,
                "calib_seconds": calib_s,
                "calib_peak_mib": calib_mib,
                **_nothing_kept_and_dfl_float(scorer, assignment, records=records, ranges=ranges),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _nothing_kept_and_dfl_float(scorer: Scorer, assignment: dict, *, records, ranges) -> dict[str, float]:
    """mAP with every layer of ``assignment`` quantized, and with only the DFL conv kept float."""
    return {
        "nothing_kept": scorer.score(assignment, records=records, ranges=ranges),
        "dfl_float": scorer.score(
            {n: f for n, f in assignment.items() if n != DFL}, records=records, ranges=ranges
        ),
    }


def w4a8_rows(bed: Testbed, scorer: Scorer, *, calib: CalibMethod) -> list[dict]:
    """INT4 weights (default method, sequential) with INT8 or UINT8 activations: the int4-int8 schemes."""
    ranges = calibrate_inputs(bed.network.module, bed.names, _drive(bed), calib=CalibConfig(method=calib))
    rows = []
    for act in (ActDtype.INT8, ActDtype.UINT8):
        fmt = QuantFormat(WeightDtype.INT4, act, Granularity.PER_CHANNEL)
        assignment = dict.fromkeys(bed.names, fmt)
        records, seconds, mib = measured(
            lambda a=assignment: quantize_scheme(
                bed.network, a, bed.calib.images, config=WeightQuantConfig(), act_ranges=ranges
            )
        )
        row = {
            "format": fmt.name,
            "calib": calib.value,
            "seconds": seconds,
            "peak_mib": mib,
            **_nothing_kept_and_dfl_float(scorer, assignment, records=records, ranges=ranges),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def w4a8_search(bed: Testbed, scorer: Scorer, *, fp32: float, max_kept: int = 8) -> list[dict]:
    """int4-int8 at the 1% target, default methods: the exact sweep's ranking (each layer's GPTQ
    record from its float input, MSE ranges, as the sweep stage does), then the top K kept in float
    and the rest quantized sequentially (as materialize does) for K = 0, 1, ... until 99% of FP32."""
    fmt = QuantFormat(WeightDtype.INT4, ActDtype.INT8, Granularity.PER_CHANNEL)
    ranges = calibrate_inputs(bed.network.module, bed.names, _drive(bed), calib=CalibConfig())
    started = time.perf_counter()
    alone = quantize_each_alone(
        bed.network, bed.names, bed.calib.images, formats=[fmt], config=WeightQuantConfig(), act_ranges=ranges
    )[fmt.name]
    engine = ExactSweep(bed.network, bed.calib, batch_size=8, detect=DetectConfig())
    errors = {x.name: engine.measure(x, fmt, act_ranges=ranges, weights=alone).box_error for x in bed.layers}
    ranking = top(errors, len(errors))
    print(f"int4-int8 exact sweep with per-layer GPTQ: {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for k in range(max_kept + 1):
        assignment = {n: fmt for n in bed.names if n not in ranking[:k]}
        records = quantize_scheme(
            bed.network, assignment, bed.calib.images, config=WeightQuantConfig(), act_ranges=ranges
        )
        score = scorer.score(assignment, records=records, ranges=ranges)
        row = {"kept": k, "layers": ranking[:k], "map50_95": score, "of_fp32": score / fp32}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if score >= 0.99 * fp32:
            break
    return rows


def _drive(bed: Testbed):
    with torch.no_grad():
        for i in range(0, len(bed.calib.images), 8):
            bed.network.run(bed.calib.images[i : i + 8])
            yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=("int4", "w8a8", "w4a8", "w4a8-search", "fp32"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--w8a8-weights", default="mse", help="weight method of the W8A8 rows: rtn or mse")
    parser.add_argument("--calib", default="max", help="calibrator of the w4a8 rows")
    parser.add_argument("--only", help="INT4 rows whose method label contains this text")
    args = parser.parse_args()
    bed = load_testbed()
    results: dict[str, object] = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        scorer = Scorer(bed, Path(tmp))
        results["fp32"] = scorer.score({})
        print(f"FP32 mAP50-95 {results['fp32']:.4f}", flush=True)
        if "int4" in args.parts:
            results["int4"] = int4_rows(bed, scorer, only=args.only)
        if "w8a8" in args.parts:
            # symmetric INT8 weights: what every INT8 runtime (TensorRT, ONNX Runtime QLinearConv) takes
            results["w8a8"] = w8a8_rows(bed, scorer, method=WeightMethod(args.w8a8_weights))
        if "w4a8" in args.parts:
            results["w4a8"] = w4a8_rows(bed, scorer, calib=CalibMethod(args.calib))
        if "w4a8-search" in args.parts:
            results["w4a8_search"] = w4a8_search(bed, scorer, fp32=results["fp32"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
