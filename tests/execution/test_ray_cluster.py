"""The Ray executor on a 2-CPU local cluster started once for this module, tiny model from YAML.

Ray results must equal the local executor's bit for bit on CPU (same torch thread count on both
sides), also when a worker is killed mid-sweep or the driver is killed and the run resumed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from quantsweep.cli.main import main  # noqa: E402
from quantsweep.core.config import (  # noqa: E402
    ActDtype,
    ExecutorConfig,
    ExecutorKind,
    Granularity,
    QuantFormat,
    SweepConfig,
    WeightDtype,
)
from quantsweep.core.records import JsonLines  # noqa: E402
from quantsweep.execution import create_executor  # noqa: E402
from quantsweep.stages import sweep  # noqa: E402
from tests.conftest import TINY_IMGSZ, cli_process, kill_after_layers  # noqa: E402

FORMATS = (
    QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL),
    QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL),  # ranges shipped to workers
)
RAY = ExecutorConfig(kind=ExecutorKind.RAY, workers=2, threads_per_worker=1, shard_layers=6)
BACKBONE = "model.[0-9].*"  # 27 of the tiny model's 64 convs: five shards of 6, seven of 4


@pytest.fixture(scope="module")
def cluster() -> str:
    """A 2-CPU local Ray cluster owned by this test process; its address for other drivers."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def one_thread():
    """Ray workers run one torch thread each; the local run they are compared with does too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(checkpoint: Path, data: Path) -> SweepConfig:
    return SweepConfig(
        model=str(checkpoint),
        images=str(data),
        imgsz=TINY_IMGSZ,
        max_images=6,
        formats=FORMATS,
        layer_patterns=(BACKBONE,),
    )


def _reports(run: Path) -> dict[str, dict]:
    """Every combination's report with timings removed (they are the only thing allowed to differ)."""
    reports = {}
    for fmt in FORMATS:
        report = json.loads((run / fmt.name / "layer-sensitivity-report.json").read_text())
        for row in report["layers"]:
            del row["metrics"]["elapsed_s"]
        report.get("quantizer", {}).pop("quantize_seconds", None)
        reports[fmt.name] = report
    return reports


@pytest.fixture(scope="module")
def local_run(tiny_checkpoint, tiny_data, tmp_path_factory) -> Path:
    """The reference: the local executor, one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sweep(_config(tiny_checkpoint, tiny_data), out=tmp_path_factory.mktemp("local"))
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # two sweeps, one on a Ray cluster
def test_ray_sweep_equals_local(cluster, local_run, tiny_checkpoint, tiny_data, tmp_path, one_thread) -> None:
    run = sweep(_config(tiny_checkpoint, tiny_data), out=tmp_path, executor=RAY)
    assert _reports(run) == _reports(local_run)
    for fmt in FORMATS:
        lines = JsonLines(run / fmt.name / "layer_results.jsonl").read()
        assert sorted(r["name"] for r in lines) == sorted(
            r["name"] for r in _reports(run)[fmt.name]["layers"]
        )
    start, end = JsonLines(run / "executors.jsonl").read()
    assert (start["event"], start["executor"], end["event"]) == ("start", "ray", "end")
    workers = end["workers_seen"]
    assert len({w["pid"] for w in workers}) == 2 and {w["threads"] for w in workers} == {1}
    assert {w["host"] for w in workers} == {socket.gethostname()}


def _worker_pids() -> list[int]:
    """Processes of this module's cluster running a sweep actor (the cluster is this process's child)."""
    psutil = pytest.importorskip("psutil")
    pids = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "SweepWorker" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
    return pids


@pytest.mark.slow  # a worker killed mid-sweep
@pytest.mark.usefixtures("cluster", "one_thread")
def test_killed_worker_has_its_shard_retried(local_run, tiny_checkpoint, tiny_data, tmp_path, caplog) -> None:
    killed = []

    @contextlib.contextmanager
    def kill_a_worker(_total, _label):
        def step(_message):
            if not killed:
                pids = _worker_pids()
                assert pids, "no sweep worker process found"
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        yield step

    with caplog.at_level(logging.WARNING, logger="quantsweep.execution.ray_cluster"):
        run = sweep(_config(tiny_checkpoint, tiny_data), out=tmp_path, executor=RAY, progress=kill_a_worker)
    assert killed
    assert "a Ray worker died" in caplog.text
    assert _reports(run) == _reports(local_run)


def _cli(args: list[str]) -> subprocess.Popen:
    # one torch thread in the driver too, so its FP32 reference matches the local run's
    return cli_process(args, OMP_NUM_THREADS="1")


@pytest.mark.slow  # a driver killed and resumed in subprocesses
def test_killed_driver_resumes_to_the_same_report(
    cluster, local_run, tiny_checkpoint, tiny_data, tmp_path
) -> None:
    ray_args = ["--executor", "ray", "--ray-address", cluster, "--ray-workers", "2", "--shard-layers", "4"]
    proc = _cli(
        [
            "sweep",
            *("--model", str(tiny_checkpoint), "--images", str(tiny_data)),
            *(
                "--imgsz",
                str(TINY_IMGSZ),
                "--max-images",
                "6",
                "--weights",
                "int4,int8",
                "--acts",
                "fp16,int8",
                "--layers",
                BACKBONE,
            ),
            *("--out", str(tmp_path), *ray_args),
        ]
    )
    pattern = "*_layer_sensitivity/*/int4-fp16/per_channel/layer_results.jsonl"
    results = kill_after_layers(proc, tmp_path, pattern, layers=8, timeout=180)
    (cut,) = tmp_path.glob("*_layer_sensitivity/*")
    done_before = JsonLines(results).read()
    # a different --worker-threads is overridden: the run's layers were measured with one thread
    resumed = _cli(["sweep", "--resume", str(cut), *ray_args, "--worker-threads", "2"])
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    lines = JsonLines(results).read()
    assert lines[: len(done_before)] == done_before  # finished work kept as it was
    assert len(lines) == len({r["name"] for r in lines}) > len(done_before)  # nothing measured twice
    reports = _reports(cut)
    reference = _reports(local_run)
    for fmt in FORMATS:
        assert reports[fmt.name] == reference[fmt.name]


def _square_and_pid(x: int) -> tuple[int, int]:
    time.sleep(0.2)
    return x * x, os.getpid()


@pytest.mark.usefixtures("cluster")
def test_map_tasks_runs_one_task_per_item_on_workers() -> None:
    with create_executor(ExecutorConfig(kind=ExecutorKind.RAY)) as executor:
        results = list(executor.map_tasks(_square_and_pid, [3, 1, 2, 5]))
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    assert {r.index: r.value[0] for r in results} == {0: 9, 1: 1, 2: 4, 3: 25}
    assert os.getpid() not in {r.value[1] for r in results}  # ran in worker processes, not here
    assert all(r.host == socket.gethostname() and r.device.startswith("cpu") for r in results)
    assert all(r.elapsed_s >= 0.2 for r in results)


@pytest.mark.usefixtures("cluster")
def test_candidates_scored_one_ray_task_each(tiny_checkpoint, tiny_data, tmp_path) -> None:
    from quantsweep.stages.eval_context import EvalRequest  # noqa: PLC0415
    from quantsweep.stages.evaluate_stage import evaluate_candidates  # noqa: PLC0415

    common = ["--out", str(tmp_path)]
    args = ["sweep", "--model", str(tiny_checkpoint), "--images", str(tiny_data), "--imgsz", str(TINY_IMGSZ)]
    assert main([*args, "--max-images", "2", "--layers", "model.2*", *common]) == 0
    (report,) = tmp_path.glob("*_layer_sensitivity/*/int4-fp16/per_channel/layer-sensitivity-report.json")
    assert main(["schemes", "--report", str(report), "--ks", "0,3", *common]) == 0
    (schemes,) = tmp_path.glob("*_schemes/*")
    # one target is enough here: what is tested is where each artifact's task runs
    assert main(["materialize", "--schemes", str(schemes), "--target", "size", *common]) == 0
    (candidates,) = tmp_path.glob("*_candidates/*")
    request = EvalRequest(
        candidates_dir=candidates,
        data=str(tiny_data),
        max_images=4,
        targets=("size",),
        latency_runs=2,
        latency_rounds=2,
    )
    local = evaluate_candidates(request, out=tmp_path / "local")
    with create_executor(ExecutorConfig(kind=ExecutorKind.RAY)) as executor:
        remote = evaluate_candidates(request, out=tmp_path / "ray", executor=executor)
    models = "results/size/models"
    names = sorted(p.name for p in (local / models).iterdir())
    assert names == sorted(p.name for p in (remote / models).iterdir()) and len(names) >= 4
    for name in names:
        here = json.loads((local / models / name).read_text())
        there = json.loads((remote / models / name).read_text())
        assert there["accuracy"] == here["accuracy"]  # same artifact, same images, same runtime
        # the timing pass ran as one task: every model it timed (a size target times FP32 and its
        # choice only) on the same worker
        assert bool(there.get("latency")) == bool(here.get("latency"))
        if there.get("latency"):
            assert there["latency"]["worker"]["host"] == socket.gethostname() and "worker" not in here
        if name == "fp32.json":  # the run's reference, already run this way: no task scores it again
            assert "worker" not in there
        else:
            assert there["worker"]["device"].startswith("cpu")  # each accuracy was a task of its own


@pytest.mark.usefixtures("cluster")
def test_a_pair_left_undecided_is_timed_again_on_a_worker(undecided_pair) -> None:
    """With an executor the pair's own pass runs as one task on a worker, as the timing pass does, and
    the check records that worker (the rule itself: tests/stages/test_evaluate_stage.py)."""
    from quantsweep.stages.evaluate_stage import TIE_PASSES, TIE_ROUNDS, settle_tie  # noqa: PLC0415

    pair = undecided_pair
    with create_executor(ExecutorConfig(kind=ExecutorKind.RAY)) as executor:
        settle_tie(pair.backend, pair.store, pair.context, pair.request, executor=executor)
    check = pair.store.all()["search_k1"]["latency"]["tie_check"]
    assert check["against"] == "k0" and check["rounds"] in (TIE_ROUNDS, TIE_PASSES * TIE_ROUNDS)
    assert check["worker"]["host"] == socket.gethostname() and check["worker"]["device"].startswith("cpu")
    assert 0.5 < check["lower_quartile_ratio"] < 2.0  # one tiny file twice, measured on the worker
