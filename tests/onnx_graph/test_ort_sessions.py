"""ONNX Runtime's profile read back per ONNX node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantsweep.onnx_graph.ort_sessions import profiled_node_times


class _Profiled:
    """A session whose profiler wrote ``events`` (as ``end_profiling`` leaves them)."""

    def __init__(self, path: Path, events: list[dict]) -> None:
        self.path = path
        path.write_text(json.dumps(events))

    def end_profiling(self) -> str:
        return str(self.path)


def _kernel(name: str, microseconds: float) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": microseconds}


def test_node_times_are_medians_over_the_profiled_runs(tmp_path) -> None:
    # 5 warm-up runs, then 20 profiled; other load slowed 6 of those 20 tenfold: a mean would
    # price the conv at 3.7 ms; its median is what it costs. A fused node's parts add up.
    conv = [5000.0] * 5 + [1000.0] * 14 + [10000.0] * 6
    events = [_kernel("/model.0/conv/Conv", us) for us in conv]
    events += [_kernel("/model.1/conv/Conv_token_3", 400.0) for _ in range(25)]
    events += [_kernel("/model.1/conv/Conv_token_4", 100.0) for _ in range(25)]
    events.append({"cat": "Session", "name": "model_run", "dur": 99.0})
    times = profiled_node_times(_Profiled(tmp_path / "trace.json", events), runs=20)
    assert times == pytest.approx({"/model.0/conv/Conv": 1.0, "/model.1/conv/Conv": 0.5})
    assert not (tmp_path / "trace.json").exists()  # the trace file is removed
