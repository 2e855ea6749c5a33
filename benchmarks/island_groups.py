"""Do neighbouring float islands cost less together than apart? Timed whole on the target's runtime.

    python benchmarks/island_groups.py --run RUN_DIR [--target openvino,ort-cpu] [--passes 3]

Two convs that feed one another, kept float together, need no requantization between them, so an
island search could price them as one group (issue 19). For a finished ``quantsweep run`` this
writes, per target and per neighbour pair (A feeds B), nothing kept, A float, B float and both
float, exactly as the search writes its trials; prices A and B by the runtime's per-conv profile
(what the search's island order uses, ``island_costs.py``); then times all of them interleaved
against nothing kept (lower-quartile ratios, ``--passes`` passes). Printed per pair: the profile's
prices and the medians over passes of each island's extra time as a share of nothing kept, and the
pair's extra time minus the sum of A's and B's: negative when grouping saves time. Run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from quantsweep.core.runs import cpu_line
from quantsweep.evaluation.island_costs import conv_units, measure_island_costs
from quantsweep.onnx_graph.candidates import FP32_FILE, read_candidates
from quantsweep.stages.common import model_source
from quantsweep.stages.kept_sets import kept_set_writer
from quantsweep.stages.schemes_stage import read_scheme_set
from quantsweep.targets import get_backend
from quantsweep.targets.timing import interleaved_latency, lower_quartile_ratios

# (A, B): A's output is B's input (a bottleneck's two convs; a downsampling conv and the C2f after
# it; two convs of one head branch)
PAIRS = (
    ("model.2.m.0.cv1.conv", "model.2.m.0.cv2.conv"),
    ("model.3.conv", "model.4.cv1.conv"),
    ("model.4.m.0.cv1.conv", "model.4.m.0.cv2.conv"),
    ("model.1.conv", "model.2.cv1.conv"),
    ("model.23.cv2.0.0.conv", "model.23.cv2.0.1.conv"),
)
ROUNDS = {"ort-cpu": 31, "openvino": 15}  # ONNX Runtime needs more rounds on these machines


def _target(run_dir: Path, target: str, *, passes: int) -> None:
    candidates = next(run_dir.glob("*_candidates/*"))
    schemes = Path(read_candidates(candidates).targets[target].schemes_dir)  # the target's own schemes
    scheme_set = read_scheme_set(schemes)
    names = {a.torch_name for a in scheme_set.ranking}
    pairs = [p for p in PAIRS if set(p) <= names]
    backend = get_backend(target)
    write = kept_set_writer(backend, candidates_dir=candidates, schemes_dir=schemes)
    image = model_source(scheme_set.sweep_config, candidates / FP32_FILE).images[:1].numpy()
    sets = {"k0": ()}
    for a, b in pairs:
        sets.update({a: (a,), b: (b,), f"{a}+{b}": (a, b)})
    with tempfile.TemporaryDirectory() as tmp:
        paths = {key: write(kept, Path(tmp) / f"{i}.onnx") for i, (key, kept) in enumerate(sets.items())}
        costs = measure_island_costs(
            backend,
            float_path=candidates / FP32_FILE,
            int8_path=paths["k0"],
            units=conv_units(onnx.load(str(candidates / FP32_FILE))),
            image=image,
        )
        runners = {key: backend.load(path) for key, path in paths.items()}
        k0_ms = interleaved_latency({"k0": runners["k0"]}, image, reference="k0", rounds=5)["k0"].median_ms
        extra = [
            lower_quartile_ratios(runners, image, reference="k0", rounds=ROUNDS[target])
            for _ in range(passes)
        ]
    print(f"\n{target}: nothing kept {k0_ms:.2f} ms; extra time as a share of it, median of {passes} passes")
    print(f"{'A + B':<48} {'profile A, B ms':>16} {'A':>7} {'B':>7} {'A+B':>7} {'A+B - (A + B)':>14}")
    nodes = scheme_set.onnx_nodes
    for a, b in pairs:
        share = [float(np.median([p[key] - 1.0 for p in extra])) for key in (a, b, f"{a}+{b}")]
        profile = "n/a" if costs is None else f"{costs.cost(nodes[a]):.3f}, {costs.cost(nodes[b]):.3f}"
        print(
            f"{a + ' + ' + b:<48} {profile:>16} {share[0]:>+7.3f} {share[1]:>+7.3f} {share[2]:>+7.3f} "
            f"{share[2] - share[0] - share[1]:>+14.3f}"
        )
    spread = [max(p[key] for p in extra) - min(p[key] for p in extra) for key in sets]
    print(f"pass-to-pass spread of one model's ratio: median {np.median(spread):.3f}, max {max(spread):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished quantsweep run directory")
    parser.add_argument("--target", default="openvino,ort-cpu")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}\nrun: {args.run}")
    for target in args.target.split(","):
        _target(args.run, target, passes=args.passes)


if __name__ == "__main__":
    main()
