"""How the label-free accuracy criterion relates to labelled mAP, from finished evaluate runs (issue 19).

Every model an evaluate run scored (candidates, baselines, every search trial) carries both figures:
mAP50-95 against the labels and against the FP32 model's own detections at confidence >= 0.25
(what a run without labels is judged by). Per testbed, the script prints how the relative drop of
the one follows the other, and how often "label-free drop <= t" agrees with "labelled drop <= 1%".

    python benchmarks/label_free.py --eval EVAL_DIR [--eval EVAL_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

THRESHOLDS = (0.01, 0.02, 0.03, 0.04)


def drops(eval_dir: Path) -> list[tuple[float, float]]:
    """``(labelled relative drop, label-free relative drop)`` of every model scored in ``eval_dir``."""
    found = {}
    for target_dir in sorted((eval_dir / "results").glob("*")):
        fp32_path = target_dir / "models" / "fp32.json"
        if not fp32_path.is_file():
            continue
        fp32 = json.loads(fp32_path.read_text())["accuracy"]
        scored = [json.loads(p.read_text()) for p in (target_dir / "models").glob("*.json")]
        accs = {(r["name"],): r["accuracy"] for r in scored if r["name"] != "fp32"}
        log = eval_dir / "search" / target_dir.name / "evaluations.jsonl"
        if log.is_file():
            for line in log.read_text().splitlines():
                trial = json.loads(line)
                accs[("trial", *sorted(trial["kept"]))] = trial["accuracy"]
        for key, acc in accs.items():
            if acc.get("map50_95_gt") is None:
                continue
            labelled = 1 - acc["map50_95_gt"] / fp32["map50_95_gt"]
            label_free = 1 - acc["map50_95_vs_fp32"] / fp32["map50_95_vs_fp32"]
            found[(target_dir.name, *key)] = (labelled, label_free)
    return list(found.values())


def main() -> None:
    """Print the relation per model (the checkpoint each run evaluated)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", type=Path, action="append", required=True, help="an evaluate run directory")
    args = parser.parse_args()
    by_model: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for eval_dir in args.eval:
        by_model[eval_dir.parent.name.removesuffix("_evaluate")] += drops(eval_dir)
    for model, points in sorted(by_model.items()):
        labelled, label_free = np.array(points).T
        slope, offset = np.polyfit(label_free, labelled, 1)
        print(
            f"{model}: {len(points)} models, correlation {np.corrcoef(label_free, labelled)[0, 1]:.2f}, "
            f"labelled drop ~ {slope:.2f} x label-free drop {offset:+.4f}"
        )
        truth = labelled <= 0.01
        for threshold in THRESHOLDS:
            passed = label_free <= threshold
            print(
                f"  label-free drop <= {threshold:.0%}: agrees with 'labelled drop <= 1%' on "
                f"{np.mean(truth == passed):.0%} ({np.sum(passed & ~truth)} pass wrongly, "
                f"{np.sum(~passed & truth)} fail wrongly, of {truth.sum()} labelled passes)"
            )


if __name__ == "__main__":
    main()
