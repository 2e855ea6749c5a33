"""What a run's OpenVINO artifacts score on a CPU without VNNI, measured on this one.

    python benchmarks/without_vnni.py --run RUN_DIR [--run RUN_DIR ...] [--models k0,ultralytics_int8]

x86 CPUs without VNNI (AVX2-only or AVX-512 without VNNI: older Xeons, many edge boxes) add INT8
products in saturating 16-bit pairs (``core/hardware.py``). OpenVINO's CPU plugin takes the kernels
of such a CPU when oneDNN is capped with ``ONEDNN_MAX_CPU_ISA=AVX2`` (``jit_avx2_I8`` instead of
``brgconv_avx512_I8``; tests/core/test_hardware.py checks the saturation it then shows). For each
finished run this scores FP32 and the named ``openvino`` models (mAP50-95 against the labels of the
run's evaluation data, first 100 images, float ops in f32, which is what such a CPU runs) twice,
each in a child process: with the kernels of this CPU and with the capped ones. The weight type the
run quantized to (``int8`` or ``int7``) is printed beside each model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CAPPED = "AVX2"


def _score(run_dir: Path, models: list[str]) -> dict[str, float]:
    """mAP50-95 of FP32 and ``models`` in OpenVINO at f32, with whatever kernels this process gets."""
    from quantsweep.evaluation.scoring import accuracy, detections_of, output_convention  # noqa: PLC0415
    from quantsweep.metrics.detections import pseudo_labels  # noqa: PLC0415
    from quantsweep.stages.common import read_sweep_config  # noqa: PLC0415
    from quantsweep.stages.eval_context import load_eval_batch  # noqa: PLC0415
    from quantsweep.targets.openvino_cpu import EXACT_CONFIG, OpenVinoRunner  # noqa: PLC0415

    sweep = read_sweep_config(next(run_dir.glob("*_layer_sensitivity/*")))
    config = json.loads((run_dir / "run_config.json").read_text())
    _, batch = load_eval_batch(config["eval_data"], max_images=100, imgsz=sweep.imgsz, num_classes=10**6)
    candidates = next(run_dir.glob("*_candidates/*"))
    paths = {"fp32": candidates / "fp32.onnx"} | {m: candidates / "openvino" / f"{m}.xml" for m in models}
    detect = sweep.detect
    found = {}
    for name, path in paths.items():
        runner = OpenVinoRunner(path, config=EXACT_CONFIG)
        detections = detections_of(runner, batch, detect, convention=output_convention(path))
        if name == "fp32":
            pseudo = pseudo_labels(detections, detect)
        found[name] = accuracy(detections, batch=batch, pseudo=pseudo).map50_95_gt
    return found


def _child(run_dir: Path, models: list[str], *, isa: str | None) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    argv = [sys.executable, __file__, "--child", "--run", str(run_dir), "--models", ",".join(models)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights(run_dir: Path) -> str:
    sweep = json.loads(next(run_dir.glob("*_layer_sensitivity/*/config.json")).read_text())
    return "/".join(f["weight"] for f in sweep["formats"] if f["act"] != "fp16")


def _label(run_dir: Path) -> str:
    """``model/run time`` of a run directory (``yolov10s-shapes_run/2026-12-05_14-20-37``)."""
    return f"{run_dir.parent.name.removesuffix('_run')}/{run_dir.name}"[:39]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a finished run directory")
    parser.add_argument("--models", default="k0,ultralytics_int8", help="openvino models of the run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.child:
        print(json.dumps(_score(args.run[0], models)))
        return
    from quantsweep.core.runs import cpu_line  # noqa: PLC0415

    print(f"CPU: {cpu_line()}; OpenVINO at f32, mAP50-95 (labels, first 100 images)")
    print(f"{'run':<40} {'weights':>8} {'model':<18} {'this CPU':>9} {'no VNNI':>9} {'change':>8}")
    for run_dir in args.run:
        native = _child(run_dir, models, isa=None)
        capped = _child(run_dir, models, isa=CAPPED)
        for name in native:
            print(
                f"{_label(run_dir):<40} {_weights(run_dir):>8} {name:<18} {native[name]:>9.4f} "
                f"{capped[name]:>9.4f} {capped[name] - native[name]:>+8.4f}"
            )


if __name__ == "__main__":
    main()
