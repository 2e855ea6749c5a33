"""Deployment targets side by side: each target's recommendation against FP32 and the runtime's own tool.

    python benchmarks/targets.py [--run RUN_DIR] [--rounds 15]

With ``--run`` it reads the recommendations of a finished ``quantsweep run`` (else it runs
``quantsweep run`` first). On the testbed at 320 px, batch 1, first 100 val images:

- ort-cpu: FP32, quantsweep's recommendation and ONNX Runtime's ``quantize_static`` (convs only,
  UINT8 activations), all in ONNX Runtime;
- openvino: FP32 at OpenVINO's default precision (bf16 on CPUs that have it: what a user runs, and
  the reference of every ratio), FP32 forced to f32 for information, quantsweep's recommendation
  (the IR the target ships, float ops at the default precision) and NNCF's default INT8
  ``nncf.quantize`` of the FP32 model with the same 16 calibration images;

each group timed in one interleaved pass (rounds that visit every model; ratios are medians of
per-round ratios to FP32), with mAP50-95 from the same runtime's outputs. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx

from quantsweep.cli.main import main as quantsweep
from quantsweep.core.runs import cpu_line
from quantsweep.evaluation.scoring import accuracy, detections_of
from quantsweep.metrics.detections import pseudo_labels
from quantsweep.onnx_graph.ort_quantize_static import quantize_with_ort
from quantsweep.stages.common import calibration_batch, read_sweep_config
from quantsweep.stages.eval_context import load_eval_batch
from quantsweep.targets import get_backend
from quantsweep.targets.openvino_cpu import DEPLOY_CONFIG, EXACT_CONFIG, OpenVinoRunner
from quantsweep.targets.timing import interleaved_latency


class _CompiledRunner(OpenVinoRunner):
    """An OpenVINO model object (NNCF's output) compiled like the target's artifacts."""

    def __init__(self, model) -> None:
        import openvino as ov  # noqa: PLC0415

        self.model = model
        self.compiled = ov.Core().compile_model(model, "CPU", DEPLOY_CONFIG)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)


def _nncf_default(fp32: Path, images) -> _CompiledRunner:
    import nncf  # noqa: PLC0415
    import openvino as ov  # noqa: PLC0415

    model = ov.Core().read_model(str(fp32))
    dataset = nncf.Dataset([image[None].numpy() for image in images])
    return _CompiledRunner(nncf.quantize(model, dataset, subset_size=len(images)))


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run is not None:
        return args.run
    out = Path(tempfile.mkdtemp(prefix="targets_"))
    assert quantsweep(["run", "--out", str(out)]) == 0
    return next(out.glob("*_run/*"))


def _score(runners, batch, detect, pseudo) -> dict[str, float]:
    return {
        name: accuracy(detections_of(r, batch, detect), batch=batch, pseudo=pseudo).map50_95_gt
        for name, r in runners.items()
    }


def _table(title: str, runners, *, batch, detect, pseudo, rounds: int, fp32_map: float) -> None:
    maps = _score(runners, batch, detect, pseudo)
    times = interleaved_latency(runners, batch.images[0][None].numpy(), reference="fp32", rounds=rounds)
    print(f"\n{title}  (interleaved: {rounds} rounds x 5 runs)")
    print(f"{'model':<28} {'median ms':>10} {'p10-p90 ms':>14} {'x FP32':>8} {'mAP50-95':>9} {'% FP32':>7}")
    for name, t in times.items():
        spread = f"{t.p10_ms:.1f}-{t.p90_ms:.1f}"
        print(
            f"{name:<28} {t.median_ms:>10.1f} {spread:>14} {t.ratio_to_reference:>8.3f} "
            f"{maps[name]:>9.4f} {maps[name] / fp32_map:>7.1%}"
        )


def main() -> None:
    """Time and score every target's recommendation beside FP32 and the runtime's own quantizer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished quantsweep run directory")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    run_dir = _run_dir(args)
    eval_dir = next(run_dir.glob("*_evaluate/*"))
    config = json.loads((run_dir / "run_config.json").read_text())
    candidates = next(run_dir.glob("*_candidates/*"))
    sweep = read_sweep_config(next(run_dir.glob("*_layer_sensitivity/*")))
    calib = calibration_batch(sweep).images
    _, batch = load_eval_batch(config["eval_data"], max_images=100, imgsz=sweep.imgsz, num_classes=8)
    ort, ov = get_backend("ort-cpu"), get_backend("openvino")
    fp32_path = candidates / "fp32.onnx"
    reference = ort.load(fp32_path)
    detect = sweep.detect
    pseudo = pseudo_labels(detections_of(reference, batch, detect), detect)
    fp32_map = accuracy(detections_of(reference, batch, detect), batch=batch, pseudo=pseudo).map50_95_gt
    rec = {
        t: json.loads((eval_dir / "results" / t / "recommendation.json").read_text())
        for t in ("ort-cpu", "openvino")
    }
    print(f"run: {run_dir}\nFP32 mAP50-95 (ONNX Runtime): {fp32_map:.4f}")
    for target in rec.values():
        print(f"{target['target']}: recommended {target['recommended']} ({target['kept']} kept float)")
    with tempfile.TemporaryDirectory() as tmp:
        ort_tool = quantize_with_ort(fp32_path, Path(tmp) / "ort.onnx", images=calib, op_types=("Conv",))
        onnx.checker.check_model(str(ort_tool))
        ort_runners = {
            "fp32": reference,
            f"quantsweep {rec['ort-cpu']['recommended']}": ort.load(Path(rec["ort-cpu"]["file"])),
            "ort quantize_static": ort.load(ort_tool),
        }
        _table(
            "ONNX Runtime CPU",
            ort_runners,
            batch=batch,
            detect=detect,
            pseudo=pseudo,
            rounds=args.rounds,
            fp32_map=fp32_map,
        )
    ov_runners = {
        # what OpenVINO runs an FP32 model at by default (bf16 on CPUs with bf16 units): the reference
        "fp32": ov.load(fp32_path),
        "fp32, forced to f32": OpenVinoRunner(fp32_path, config=EXACT_CONFIG),
        f"quantsweep {rec['openvino']['recommended']}": ov.load(Path(rec["openvino"]["file"])),
        "nncf.quantize default": _nncf_default(fp32_path, calib),
    }
    _table(
        "OpenVINO CPU",
        ov_runners,
        batch=batch,
        detect=detect,
        pseudo=pseudo,
        rounds=args.rounds,
        fp32_map=fp32_map,
    )
    print(f"\nCPU: {cpu_line()}")
    print(f"threads: ONNX Runtime default, OpenVINO {DEPLOY_CONFIG}; numpy {np.__version__}")


if __name__ == "__main__":
    main()
