"""Where OpenVINO spends an inference: per-node performance counters of several IRs, summed by
node type and kernel (with the runtime precision in the kernel's name), side by side.

    python benchmarks/openvino_profile.py CANDIDATES/openvino/k0.xml \
        CANDIDATES/openvino/ultralytics_int8.xml

Each file is compiled for the CPU with 2 threads at OpenVINO's default precision, run 5 times to
warm up and 30 times counted; the median wall time of the counted runs is printed too.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np
import openvino as ov

from quantsweep.core.runs import cpu_line


def profile(core: ov.Core, path: str, *, imgsz: int, runs: int) -> tuple[dict, collections.Counter, float]:
    """(ms per inference by (node type, kernel), node count by the same, median wall ms)."""
    compiled = core.compile_model(path, "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 2})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(5):
        request.infer({0: x})
    spent: dict[tuple[str, str], float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        request.infer({0: x})
        walls.append(time.perf_counter() - started)
        for node in request.profiling_info:
            if node.status.name == "EXECUTED":
                key = (node.node_type, node.exec_type)
                spent[key] += node.real_time.total_seconds() * 1e3 / runs
                count[key] += 1
    return (
        spent,
        collections.Counter({k: v // runs for k, v in count.items()}),
        statistics.median(walls) * 1e3,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    core = ov.Core()
    results = [profile(core, f, imgsz=args.imgsz, runs=args.runs) for f in args.files]
    print(cpu_line())
    for i, f in enumerate(args.files):
        print(f"[{i}] {f}: median {results[i][2]:.2f} ms (with counters on)")
    keys = sorted({k for r in results for k in r[0]}, key=lambda k: -max(r[0].get(k, 0.0) for r in results))
    print(
        f"{'node type':<20}{'kernel':<32}"
        + "".join(f"{f'[{i}] ms':>10}{'n':>5}" for i in range(len(results)))
    )
    for key in keys:
        cells = "".join(f"{r[0].get(key, 0.0):10.3f}{r[1].get(key, 0):5d}" for r in results)
        print(f"{key[0]:<20}{key[1][:30]:<32}{cells}")
    print(f"{'all nodes':<52}" + "".join(f"{sum(r[0].values()):10.3f}{'':5}" for r in results))


if __name__ == "__main__":
    main()
