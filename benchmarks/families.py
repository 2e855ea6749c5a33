"""Every stage on an s-size model of every detector family, random weights, at 320 px (issue 17).

For YOLOv8s, YOLOv9s, YOLOv10s, YOLO11s, YOLO12s and RT-DETR-L, built from Ultralytics' own YAMLs
with random weights (fan-in scaled, class biases zeroed so that the FP32 model detects something to
be judged against, as the tests build them: this checks that every stage works and that every
artifact agrees with Torch on its own runtime, not accuracy), the script runs ``sweep`` (fast
method, 4 calibration images) -> ``schemes`` (k0 and k5 per combination) -> ``materialize`` (every
CPU target) -> ``evaluate`` (8 images, 2 short timing rounds), each stage in its own process so that
its wall time and peak resident memory are its own. It prints one table row per family and target:
quantized convs and Linear layers, mapping coverage (layers the schemes map to an ONNX node),
whether the written precision counts match the plan, the runtime check of every artifact against
Torch, and each stage's time and peak memory; a stage that fails is named with its one-line error.

    python benchmarks/families.py [--families yolov8s,rtdetr-l] [--imgsz 320] [--out DIR]

It builds the models with ``tests/conftest.py::tiny_model``, so it runs from a checkout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' model builder

FAMILIES = ("yolov8s", "yolov9s", "yolov10s", "yolo11s", "yolo12s", "rtdetr-l")
TARGETS = ("ort-cpu", "openvino", "size")
# the child process runs one CLI stage and reports its own peak resident memory (kB on Linux)
CHILD = (
    "import resource, sys\n"
    "from quantsweep.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_stage(args: list[str]) -> dict:
    """One CLI stage in a fresh process: exit code, wall seconds, peak RSS (MB), last error line."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    peak = next(
        (int(line.split()[1]) / 1024 for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")),
        float("nan"),
    )
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("PEAK")]
    return {"rc": done.returncode, "s": seconds, "mb": peak, "error": lines[-1] if done.returncode else ""}


def newest(folder: Path, pattern: str) -> Path:
    """The most recent match of ``pattern`` under ``folder`` (run directories are timestamped)."""
    found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} under {folder}")
    return found[-1]


def family_rows(family: str, *, images: Path, data: Path, imgsz: int, out: Path) -> list[dict]:
    """Run the four stages on ``family`` and return one row per target."""
    from tests.conftest import tiny_model  # noqa: PLC0415 (the tests' random detector, at s size)

    model = str(out / f"{family}.pt")
    torch.save({"model": tiny_model(f"{family}.yaml").network.module}, model)
    stages: dict[str, dict] = {}
    targets = ",".join(TARGETS)
    sweep = ["sweep", "--model", model, "--images", str(images), "--imgsz", str(imgsz)]
    sweep += ["--max-images", "4", "--method", "fast", "--target", targets, "--out", str(out)]
    stages["sweep"] = run_stage(sweep)
    if stages["sweep"]["rc"] == 0:
        reports = sorted(out.glob("*_layer_sensitivity/*/*/*/layer-sensitivity-report.json"))
        schemes_dirs, stages["schemes"] = [], {"rc": 0, "s": 0.0, "mb": 0.0, "error": ""}
        for report in reports:
            step = run_stage(["schemes", "--report", str(report), "--ks", "0,5", "--out", str(out)])
            stages["schemes"] = {
                "rc": step["rc"] or stages["schemes"]["rc"],
                "s": stages["schemes"]["s"] + step["s"],
                "mb": max(stages["schemes"]["mb"], step["mb"]),
                "error": step["error"] or stages["schemes"]["error"],
            }
            schemes_dirs.append(newest(out, "*_schemes/*"))
        if stages["schemes"]["rc"] == 0:
            materialize = ["materialize", "--target", targets, "--out", str(out)]
            for folder in schemes_dirs:
                materialize += ["--schemes", str(folder)]
            stages["materialize"] = run_stage(materialize)
    if stages.get("materialize", {}).get("rc") == 0:
        candidates = newest(out, "*_candidates/*")
        evaluate = ["evaluate", "--candidates", str(candidates), "--data", str(data), "--target", targets]
        evaluate += ["--eval-images", "8", "--latency-rounds", "2", "--latency-runs", "2", "--out", str(out)]
        stages["evaluate"] = run_stage(evaluate)
    return [_row(family, target, stages, out) for target in TARGETS]


def _row(family: str, target: str, stages: dict[str, dict], out: Path) -> dict:
    row = {"family": family, "target": target, "stages": stages}
    inputs = sorted(out.glob("*_layer_sensitivity/*/inputs.json"))
    if inputs:
        layers = json.loads(inputs[-1].read_text())["layers"]
        row["layers"] = len(layers)
        row["linear"] = sum(layer["kind"] == "Linear" for layer in layers)
    mappings = sorted(out.glob("*_schemes/*/mapping.json"))
    if mappings and "layers" in row:
        row["mapped"] = len(json.loads(mappings[-1].read_text())["nodes"])
    indexes = sorted(out.glob("*_candidates/*/candidates.json"))
    if indexes:
        entry = json.loads(indexes[-1].read_text())["targets"].get(target, {})
        made = [a for a in entry.get("artifacts", []) if a["policy"] != "fp32"]
        ours = [a for a in made if a["policy"] != "baseline"]
        row["artifacts"] = len(made)
        row["counts_match"] = all(a.get("counts_match") is not False for a in ours)
        row["agree"] = sum(a.get("runtime_agrees") is True for a in made)
        row["checked"] = sum(a.get("runtime_agrees") is not None for a in made)
        row["k0_check"] = next((a.get("runtime_summary") for a in ours if a["name"] == "k0"), None)
    return row


def _cell(stage: dict | None) -> str:
    if stage is None:
        return "not reached"
    if stage["rc"]:
        return f"FAILED: {stage['error'][:120]}"
    return f"{stage['s']:.0f} s, {stage['mb']:.0f} MB"


def print_table(rows: list[dict]) -> None:
    """The docs table: one row per family and target."""
    head = (
        "| family | target | convs + Linear (Linear) | mapped | artifacts agree with Torch on the "
        "runtime | counts | sweep | schemes | materialize | evaluate |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in rows:
        stages = row["stages"]
        agree = f"{row['agree']}/{row['checked']}" if "checked" in row else "-"
        print(
            f"| {row['family']} | {row['target']} | {row.get('layers', '-')} ({row.get('linear', '-')}) | "
            f"{row.get('mapped', '-')} | {agree} | {'match' if row.get('counts_match') else '-'} | "
            + " | ".join(_cell(stages.get(s)) for s in ("sweep", "schemes", "materialize", "evaluate"))
            + " |"
        )


def main() -> None:
    """Run the matrix and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    from quantsweep.data.shapes import generate_split  # noqa: PLC0415

    base = args.out or Path(tempfile.mkdtemp(prefix="families-"))
    images = generate_split(base / "data", split="val", count=12, size=args.imgsz, split_seed=5)
    data = images  # random weights: the labels only make evaluate run end to end
    rows = []
    for family in args.families.split(","):
        out = base / family
        out.mkdir(parents=True, exist_ok=True)
        family_rows_ = family_rows(family, images=images, data=data, imgsz=args.imgsz, out=out)
        rows.extend(family_rows_)
        print(json.dumps(family_rows_, default=str), file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
