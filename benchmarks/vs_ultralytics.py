"""quantsweep's recommendations side by side with Ultralytics' one-line INT8 exports, per runtime.

    python benchmarks/vs_ultralytics.py --run RUN_DIR [--run RUN_DIR ...] [--rounds 11]

For each finished ``quantsweep run`` (one per testbed, with the ``ort-cpu`` and ``openvino``
targets), Ultralytics 8.4 exports the same checkpoint the way a deployment engineer tries first:
``format='onnx', int8=True`` (ONNX Runtime ``quantize_static``) and ``format='openvino',
int8=True`` (NNCF, MIXED preset, head ignored; needs ``pip install nncf``), calibrated on the run's
own calibration images (a data YAML whose val split lists them). Per runtime, FP32 (as the runtime
runs it by default: f32 in ONNX Runtime, bf16 in OpenVINO on CPUs with bf16), quantsweep's
recommendation and Ultralytics' export are scored on the run's evaluation images (mAP50-95 from that
runtime's outputs, decoded by one scorer) and timed in one interleaved pass. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from quantsweep.core.runs import cpu_line
from quantsweep.data.images import resolve_images
from quantsweep.evaluation.scoring import accuracy, detections_of, output_convention
from quantsweep.metrics.detections import pseudo_labels
from quantsweep.models.ultralytics_adapter import ONNX_INT8, OPENVINO_INT8, export_int8
from quantsweep.stages.common import read_sweep_config
from quantsweep.stages.eval_context import load_eval_batch
from quantsweep.targets import get_backend
from quantsweep.targets.openvino_cpu import OpenVinoRunner
from quantsweep.targets.timing import interleaved_latency


def _exports(model: str, calib_paths: list[Path], *, imgsz: int, out: Path) -> dict[str, Path | str]:
    """Ultralytics' INT8 exports of ``model`` calibrated on ``calib_paths``; a failure is its message."""
    found: dict[str, Path | str] = {}
    for fmt in (ONNX_INT8, OPENVINO_INT8):
        try:  # the same export the openvino and ort-cpu targets make as their baseline
            found[fmt.format] = export_int8(
                model, fmt=fmt, calib_paths=calib_paths, imgsz=imgsz, work_dir=out / fmt.format
            )
        except Exception as exc:  # an exporter that cannot run here is a row that says so
            found[fmt.format] = f"{type(exc).__name__}: {exc}"[:200]
    return found


def _table(title: str, runners: dict, *, batch, detect, pseudo, conventions, rounds: int) -> None:
    maps = {
        name: accuracy(
            detections_of(r, batch, detect, convention=conventions.get(name)), batch=batch, pseudo=pseudo
        ).map50_95_gt
        for name, r in runners.items()
    }
    times = interleaved_latency(runners, batch.images[0][None].numpy(), reference="fp32", rounds=rounds)
    print(f"\n{title} (interleaved: {rounds} rounds x 5 runs; ratios to FP32 at the runtime's default)")
    print(f"{'model':<44} {'ms':>7} {'x FP32':>7} {'mAP50-95':>9} {'% FP32':>7} {'float ops':>9}")
    for name, t in times.items():
        share = maps[name] / maps["fp32"]
        print(
            f"{name:<44} {t.median_ms:>7.1f} {t.ratio_to_reference:>7.3f} {maps[name]:>9.4f} "
            f"{share:>7.1%} {t.float_precision or '-':>9}"
        )


def _ours(chosen: dict, results: Path) -> list[dict]:
    """The recommendation; where it is FP32 (no quantized model beat it on that CPU), the fastest
    quantized model that met the accuracy target instead, so the table still says what INT8 does."""
    if chosen["policy"] != "fp32":
        return [{"name": chosen["recommended"], "kept": chosen["kept"], "file": chosen["file"]}]
    models = [json.loads(p.read_text()) for p in sorted((results / "models").glob("*.json"))]
    passing = [
        m
        for m in models
        if m["policy"] not in ("fp32", "baseline") and m.get("latency") and m["score"] >= chosen["threshold"]
    ]
    return [min(passing, key=lambda m: m["latency"]["median_ms"])] if passing else []


def compare(run_dir: Path, *, rounds: int) -> None:
    """Print the two side-by-side tables for one finished run."""
    config = json.loads((run_dir / "run_config.json").read_text())
    sweep = read_sweep_config(next(run_dir.glob("*_layer_sensitivity/*")))
    candidates = next(run_dir.glob("*_candidates/*"))
    eval_dir = next(run_dir.glob("*_evaluate/*"))
    rec = {
        t: json.loads((eval_dir / "results" / t / "recommendation.json").read_text())
        for t in ("ort-cpu", "openvino")
    }
    calib = resolve_images(sweep.images, image_root=sweep.image_root).subset(
        count=sweep.max_images, seed=sweep.seed
    )
    _, batch = load_eval_batch(config["eval_data"], max_images=100, imgsz=sweep.imgsz, num_classes=10**6)
    ort, ov = get_backend("ort-cpu"), get_backend("openvino")
    fp32_path = candidates / "fp32.onnx"
    detect = sweep.detect
    reference = ort.load(fp32_path)
    pseudo = pseudo_labels(
        detections_of(reference, batch, detect, convention=output_convention(fp32_path)), detect
    )
    print(f"\nrun: {run_dir}\nmodel: {sweep.model}, {sweep.imgsz} px, {len(calib.paths)} calibration images")
    with tempfile.TemporaryDirectory() as tmp:
        exports = _exports(sweep.model, list(calib.paths), imgsz=sweep.imgsz, out=Path(tmp))
        for target, fmt, backend in (("ort-cpu", "onnx", ort), ("openvino", "openvino", ov)):
            chosen = rec[target]
            runners = {"fp32": backend.load(fp32_path)}
            conventions = {"fp32": output_convention(fp32_path)}
            for record in _ours(chosen, eval_dir / "results" / target):
                ours = f"quantsweep {record['name']} ({record['kept']} float)"
                runners[ours] = backend.load(Path(record["file"]))
                conventions[ours] = output_convention(Path(record["file"]))
            theirs = exports[fmt]
            if isinstance(theirs, str):
                print(f"\nUltralytics format='{fmt}' int8=True did not run here: {theirs}")
            else:
                name = f"Ultralytics format='{fmt}' int8=True"
                runners[name] = OpenVinoRunner(theirs) if fmt == "openvino" else backend.load(theirs)
            _table(
                backend.runtime,
                runners,
                batch=batch,
                detect=detect,
                pseudo=pseudo,
                conventions=conventions,
                rounds=rounds,
            )


def main() -> None:
    """Side-by-side tables for every run given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a finished quantsweep run")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    for run_dir in args.run:
        compare(run_dir, rounds=args.rounds)
    print(f"\nCPU: {cpu_line()}")


if __name__ == "__main__":
    main()
