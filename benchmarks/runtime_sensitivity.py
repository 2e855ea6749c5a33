"""Runtime-in-the-loop sensitivity: the sweep's top layers measured again on the target's runtime.

    python benchmarks/runtime_sensitivity.py --run RUN_DIR [--target openvino] [--top 20] [--images 8]
    python benchmarks/runtime_sensitivity.py --run RUN_DIR --direct-onnx   # the old openvino artifact

The sweep ranks layers with Torch fake quantization. Here each of the ``--top`` layers of the
target's ranking (the schemes' order) is written alone at the target's low precision (everything
else float) in the target's placement, saved as the target ships it, loaded in the target's runtime
and run on calibration images; its sensitivity is the sweep's own metric (the confidence-weighted
box error, ``metrics/output_errors.py``) of the runtime's output against the FP32 model's in the same
runtime. Printed: the
cost per layer and in all, Spearman's rho between the Torch and runtime orders, and how many of the
Torch top-10 the runtime puts in its top-10, so one can see what runtime-in-the-loop costs and
whether it changes the ranking. ``--direct-onnx`` loads the .onnx straight into OpenVINO (what the
openvino target shipped before it shipped IR), where a layer only that runtime breaks shows up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

from quantsweep.core.runs import cpu_line
from quantsweep.evaluation.scoring import head_output, output_convention
from quantsweep.metrics.output_errors import output_error
from quantsweep.models.outputs import HeadOutput
from quantsweep.onnx_graph.candidates import FP32_FILE, read_candidates
from quantsweep.schemes.scheme_records import Precision
from quantsweep.stages.common import calibration_batch
from quantsweep.stages.kept_sets import recorded_ranges
from quantsweep.stages.schemes_stage import read_scheme_set
from quantsweep.targets import get_backend
from quantsweep.targets.openvino_cpu import OpenVinoRunner


def _outputs(runner, images, convention) -> HeadOutput:
    return head_output(runner, images, convention=convention)


def _error(test: HeadOutput, reference: HeadOutput) -> float:
    return output_error(test, reference).box_error


def main() -> None:
    """Measure the top layers of a finished run on the target's runtime; print cost and agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished quantsweep run directory")
    parser.add_argument("--target", default="openvino")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--direct-onnx", action="store_true", help="load the .onnx itself in OpenVINO")
    args = parser.parse_args()
    candidates = next(args.run.glob("*_candidates/*"))
    index = read_candidates(candidates)
    scheme_set = read_scheme_set(Path(index.targets[args.target].schemes_dir))
    backend = get_backend(args.target)
    images = calibration_batch(scheme_set.sweep_config).images[: args.images]
    ranges = recorded_ranges(candidates, images)  # the materialize run's ranges, as the search uses
    fp32 = ranges.model
    convention = output_convention(candidates / FP32_FILE)
    reference = _outputs(backend.load(candidates / FP32_FILE), images, convention)
    ranking = scheme_set.ranking[: args.top]
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for position, layer in enumerate(ranking):
            began = time.perf_counter()
            plan = {a.onnx_node: Precision(None) for a in scheme_set.ranking}
            plan[layer.onnx_node] = scheme_set.low
            model = backend.write(fp32, backend.adapt_plan(plan, {}), ranges=ranges)
            artifact = backend.save(model, Path(tmp) / f"layer{position}.onnx")
            runner = (
                OpenVinoRunner(artifact.with_suffix(".onnx")) if args.direct_onnx else backend.load(artifact)
            )
            error = _error(_outputs(runner, images, convention), reference)
            rows.append((layer.torch_name, layer.sensitivity or 0.0, error, time.perf_counter() - began))
    total = time.perf_counter() - start
    how = ".onnx loaded directly" if args.direct_onnx else "as shipped"
    print(f"run: {args.run}\ntarget: {args.target} ({how})")
    print(f"CPU: {cpu_line()}; {len(images)} images at {scheme_set.sweep_config.imgsz} px")
    print(f"{'torch':>6} {'runtime':>8} {'layer':<32} {'torch score':>12} {'runtime box err':>16} {'s':>6}")
    runtime_order = sorted(range(len(rows)), key=lambda i: -rows[i][2])
    runtime_rank = {i: r for r, i in enumerate(runtime_order)}
    for i, (name, score, error, seconds) in enumerate(rows):
        print(f"{i + 1:>6} {runtime_rank[i] + 1:>8} {name:<32} {score:>12.4g} {error:>16.4f} {seconds:>6.1f}")
    rho = spearmanr([r[1] for r in rows], [r[2] for r in rows]).statistic
    overlap = len(set(range(min(10, len(rows)))) & set(runtime_order[:10]))
    print(f"\n{len(rows)} layers in {total:.1f} s ({total / len(rows):.2f} s per layer)")
    print(f"Spearman rho (Torch box error vs runtime box error): {rho:.3f}; top-10 overlap: {overlap}/10")


if __name__ == "__main__":
    main()
