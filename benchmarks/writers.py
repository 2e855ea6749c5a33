"""Native writer against ModelOpt on the same ``tensorrt`` schemes, read from two candidates runs.

For every scheme of the ``tensorrt`` target in both runs: per-node precision against the plan
(counts and the nodes that differ), agreement with the Torch simulation of the plan (relative L2 on
the verification images), mAP50-95 against the labels on the evaluation images in ONNX Runtime on
CPU (the accuracy reference of every target), and the seconds the writer took. Engine latency needs
a GPU (``benchmarks/gpu.py``).

    quantsweep materialize --schemes S --target tensorrt --out A              # native
    quantsweep materialize --schemes S --target tensorrt --writer modelopt --out B
    python benchmarks/writers.py --native A/... --modelopt B/... --data VAL.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantsweep.stages.eval_context import EvalRequest, prepare_context
from quantsweep.targets import get_backend

TARGET = "tensorrt"


def _rows(candidates: Path, data: str, images: int, writer: str, names: set[str]) -> list[dict]:
    context, index = prepare_context(candidates, EvalRequest(candidates, data, max_images=images))
    ort = get_backend("ort-cpu")  # the accuracy reference runtime of every target
    print(f"{candidates}: FP32 mAP50-95 {context.reference.map50_95_gt:.4f} on {images} images")
    rows = []
    for artifact in index.targets[TARGET].artifacts:
        if artifact.name not in names:
            continue
        path = candidates / artifact.file
        verify = json.loads(path.with_suffix(".verify.json").read_text())
        score = context.score(ort, path)
        rows.append(
            {
                "scheme": artifact.name,
                "writer": writer,
                "written": verify["precision_counts"],
                "planned": verify["expected_counts"],
                "deviations": len(verify.get("plan_deviations", {})),
                "torch_rel_l2": verify["torch_vs_onnx_rel_l2"],
                "map50_95": score.map50_95_gt,
                "seconds": verify.get("write_seconds"),
            }
        )
    return rows


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))


def main() -> None:
    """Print the side-by-side table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--native", type=Path, action="append", default=[], help="candidates run")
    parser.add_argument("--modelopt", type=Path, action="append", default=[], help="candidates run")
    parser.add_argument("--data", required=True, help="labelled evaluation images")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--schemes", default="k0,k5,k10", help="scheme names to compare")
    args = parser.parse_args()
    names = set(args.schemes.split(","))
    rows = [r for c in args.native for r in _rows(c, args.data, args.images, "native", names)]
    rows += [r for c in args.modelopt for r in _rows(c, args.data, args.images, "modelopt", names)]
    print("| scheme | writer | written (planned) | nodes off plan | Torch rel. L2 | mAP50-95 | write s |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["planned"] != r["written"], r["scheme"], r["writer"])):
        match = "= plan" if r["written"] == r["planned"] else f"plan: {_counts(r['planned'])}"
        print(
            f"| {r['scheme']} | {r['writer']} | {_counts(r['written'])} ({match}) | {r['deviations']} "
            f"| {r['torch_rel_l2']:.4f} | {r['map50_95']:.4f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
