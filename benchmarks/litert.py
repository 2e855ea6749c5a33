"""The ``litert`` target against Ultralytics' own LiteRT exports, side by side on LiteRT (XNNPACK).

    python benchmarks/litert.py --run RUN_DIR [--run RUN_DIR ...] [--rounds 11] [--w8a16-images 20]

For each finished ``quantsweep run --target litert``: the float ``.tflite`` (litert-torch, what
every litert speed-up is stated against), quantsweep's recommendation, Ultralytics 8.4's
``format='litert', quantize=8`` (made by the run as the target's baseline, from the same
checkpoint and calibration images) and ``quantize='w8a16'`` (made here, the same way). mAP50-95 on
the run's evaluation images from LiteRT's outputs (one scorer); the first three timed in one
interleaved pass. ``w8a16`` has no XNNPACK kernels (seconds per image), so it is scored on the first
``--w8a16-images`` images only (with FP32 on the same images beside it) and timed in its own short
interleaved pass against the float model. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from quantsweep.core.runs import cpu_line
from quantsweep.data.images import Batch, resolve_images
from quantsweep.evaluation.scoring import accuracy, detections_of
from quantsweep.metrics.detections import pseudo_labels
from quantsweep.models.ultralytics_adapter import UltralyticsExport, export_int8
from quantsweep.stages.common import read_sweep_config
from quantsweep.stages.eval_context import load_eval_batch
from quantsweep.targets import get_backend
from quantsweep.targets.litert_cpu import threads
from quantsweep.targets.timing import interleaved_latency

W8A16 = UltralyticsExport("litert", "w8a16", needs="litert_torch")


def _maps(runners: dict, batch, detect) -> dict[str, float]:
    pseudo = pseudo_labels(detections_of(runners["fp32"], batch, detect), detect)
    return {
        name: accuracy(detections_of(r, batch, detect), batch=batch, pseudo=pseudo).map50_95_gt
        for name, r in runners.items()
    }


def _print(times: dict, maps: dict, note: str = "") -> None:
    for name, t in times.items():
        print(
            f"{name:<48} {t.median_ms:>8.1f} {t.ratio_to_reference:>7.3f} {maps[name]:>9.4f} "
            f"{maps[name] / maps['fp32']:>7.1%}{note if name != 'fp32' else ''}"
        )


def compare(run_dir: Path, *, rounds: int, w8a16_images: int) -> None:
    """Print the side-by-side table for one finished run."""
    config = json.loads((run_dir / "run_config.json").read_text())
    sweep = read_sweep_config(next(run_dir.glob("*_layer_sensitivity/*")))
    candidates = next(run_dir.glob("*_candidates/*"))
    eval_dir = next(run_dir.glob("*_evaluate/*"))
    chosen = json.loads((eval_dir / "results" / "litert" / "recommendation.json").read_text())
    calib = resolve_images(sweep.images, image_root=sweep.image_root).subset(
        count=sweep.max_images, seed=sweep.seed
    )
    _, batch = load_eval_batch(config["eval_data"], max_images=100, imgsz=sweep.imgsz, num_classes=10**6)
    backend = get_backend("litert")
    runners = {"fp32": backend.load(candidates / "fp32.onnx")}
    ours = f"quantsweep {chosen['recommended']} ({chosen['kept']} float)"
    runners[ours] = backend.load(Path(chosen["file"]))
    baseline = candidates / "litert" / "ultralytics_int8.tflite"
    if baseline.is_file():
        runners["Ultralytics format='litert', quantize=8"] = backend.load(baseline)
    print(f"\nrun: {run_dir}\nmodel: {sweep.model}, {sweep.imgsz} px, {len(calib.paths)} calibration images")
    print(f"LiteRT interpreter, XNNPACK, num_threads={threads()}; ratios to the float .tflite")
    print(f"{'model':<48} {'ms':>8} {'x float':>7} {'mAP50-95':>9} {'% float':>7}")
    maps = _maps(runners, batch, sweep.detect)
    image = batch.images[0][None].numpy()
    _print(interleaved_latency(runners, image, reference="fp32", rounds=rounds), maps)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = export_int8(
                sweep.model, fmt=W8A16, calib_paths=list(calib.paths), imgsz=sweep.imgsz, work_dir=Path(tmp)
            )
        except Exception as exc:  # an exporter that cannot run here is a row that says so
            print(f"Ultralytics quantize='w8a16' did not run here: {type(exc).__name__}: {exc}"[:300])
            return
        slow = {"fp32": runners["fp32"], "Ultralytics format='litert', quantize='w8a16'": backend.load(path)}
        labels = None if batch.labels is None else batch.labels[:w8a16_images]
        few = Batch(images=batch.images[:w8a16_images], labels=labels)
        maps = _maps(slow, few, sweep.detect)
        note = f"  (mAP on the first {len(few.images)} images, FP32 {maps['fp32']:.4f} there)"
        times = interleaved_latency(slow, image, reference="fp32", rounds=2, runs_per_round=2, warmup=1)
        _print(times, maps, note)


def main() -> None:
    """Side-by-side tables for every run given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a finished quantsweep run")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--w8a16-images", type=int, default=20)
    args = parser.parse_args()
    for run_dir in args.run:
        compare(run_dir, rounds=args.rounds, w8a16_images=args.w8a16_images)
    print(f"\nCPU: {cpu_line()}")


if __name__ == "__main__":
    main()
