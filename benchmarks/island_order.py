"""Float islands by sensitivity per millisecond against the sweep's rank order, side by side.

    python benchmarks/island_order.py --run RUN_DIR --max-drop 0.005 [--target ort-cpu,openvino]

For a finished ``quantsweep run`` whose nothing-kept misses the accuracy target (``--recovery
none`` and a strict ``--max-drop`` force islands on the testbeds), runs the evaluate stage's search
twice on the run's candidates, once per ``--island-order``, then per target scores (from each
evaluate's records) and times FP32 (the runtime's default precision) and both recommendations in
one interleaved pass. Prints, per order: the recommendation, its float convs, what they cost by
the runtime's per-conv profile (island_costs.json), search evaluations, mAP50-95 and x FP32 time.
Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantsweep.cli.main import main as quantsweep
from quantsweep.core.runs import cpu_line
from quantsweep.stages.eval_context import load_eval_batch
from quantsweep.targets import get_backend
from quantsweep.targets.timing import interleaved_latency

ORDERS = ("rank", "gain-per-ms")


def _evaluate(run_dir: Path, *, order: str, args) -> Path:
    config = json.loads((run_dir / "run_config.json").read_text())
    candidates = next(run_dir.glob("*_candidates/*"))
    out = run_dir / f"island_order_{order}"
    done = sorted(out.glob(f"*_evaluate/*/search/{args.target.split(',')[0]}/search.json"))
    if done and (done[-1].parents[2] / "summary.md").is_file():  # finished before: time it again only
        return done[-1].parents[2]
    argv = [
        *("evaluate", "--candidates", str(candidates), "--data", config["eval_data"], "--search"),
        *("--target", args.target, "--max-drop", str(args.max_drop), "--drop-mode", args.drop_mode),
        *("--island-order", order, "--out", str(out)),
    ]
    if quantsweep(argv) != 0:
        raise SystemExit(f"evaluate with --island-order {order} failed")
    return max(out.glob("*_evaluate/*"))  # the newest


def _row(eval_dir: Path, target: str, costs: dict, *, run_dir: Path) -> dict:
    rec = json.loads((eval_dir / "results" / target / "recommendation.json").read_text())
    search = json.loads((eval_dir / "search" / target / "search.json").read_text())
    name = rec["recommended"] or rec["closest"]  # closest: nothing met the target within the budget
    model = json.loads((eval_dir / "results" / target / "models" / f"{name}.json").read_text())
    nodes = {a["torch_name"]: a["onnx_node"] for a in _ranking(run_dir, target)}
    kept = model.get("kept_layers") or []
    islands = sum(costs["float_ms"][nodes[n]] - costs["int8_ms"][nodes[n]] for n in kept)
    return {
        "name": name,
        "file": next(run_dir.glob("*_candidates/*")) / model["file"],  # an absolute path stays as it is
        "kept": len(kept),
        "islands_ms": islands,
        "evaluations": len(search["evaluations"]),
        "map": model["score"],
        "reference": search["reference"],
    }


def _ranking(run_dir: Path, target: str) -> list[dict]:
    index = json.loads(next(run_dir.glob("*_candidates/*/candidates.json")).read_text())
    schemes_dir = Path(index["targets"][target]["schemes_dir"])
    return json.loads((schemes_dir / "scheme_k0.json").read_text())["layers"]


def main() -> None:
    """Both searches, then one interleaved timing pass per target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished quantsweep run")
    parser.add_argument("--target", default="ort-cpu,openvino")
    parser.add_argument("--max-drop", type=float, default=0.005)
    parser.add_argument("--drop-mode", default="relative")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    evals = {order: _evaluate(args.run, order=order, args=args) for order in ORDERS}
    config = json.loads((args.run / "run_config.json").read_text())
    _, batch = load_eval_batch(
        config["eval_data"], max_images=1, imgsz=config["sweep"]["imgsz"], num_classes=10**6
    )
    image = batch.images[:1].numpy()
    for target in args.target.split(","):
        costs_path = evals["gain-per-ms"] / "search" / target / "island_costs.json"
        if not costs_path.is_file():
            print(f"\n{target}: nothing-kept met the target; no islands to order")
            continue
        costs = json.loads(costs_path.read_text())
        rows = {order: _row(evals[order], target, costs, run_dir=args.run) for order in ORDERS}
        backend = get_backend(target)
        fp32 = next(args.run.glob("*_candidates/*")) / "fp32.onnx"
        runners = {"fp32": backend.load(fp32), **{o: backend.load(r["file"]) for o, r in rows.items()}}
        times = interleaved_latency(runners, image, reference="fp32", rounds=args.rounds)
        reference = rows["rank"]["reference"]
        print(
            f"\n{target} ({args.rounds} interleaved rounds x 5 runs; FP32 {times['fp32'].median_ms:.2f} ms)"
        )
        print(
            f"{'order':<12} {'recommended':<24} {'float':>5} {'islands ms':>10} {'evals':>5} "
            f"{'mAP50-95':>9} {'% FP32':>7} {'x FP32':>7}"
        )
        for order, r in rows.items():
            print(
                f"{order:<12} {r['name']:<24} {r['kept']:>5} {r['islands_ms']:>+10.3f} {r['evaluations']:>5} "
                f"{r['map']:>9.4f} {r['map'] / reference:>7.1%} {times[order].ratio_to_reference:>7.3f}"
            )
    print(f"\nCPU: {cpu_line()}")


if __name__ == "__main__":
    main()
