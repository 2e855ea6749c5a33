"""The executor registry and the local executor: the default path never imports Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from quantsweep.cli.main import main
from quantsweep.core.config import ExecutorConfig, ExecutorKind
from quantsweep.core.errors import InputError
from quantsweep.execution import create_executor
from tests.conftest import TINY_IMGSZ


def test_local_sweep_and_run_import_no_ray(tiny_checkpoint, tiny_data, tmp_path) -> None:
    # A fresh interpreter: this test process may have imported Ray for other tests.
    script = textwrap.dedent(
        f"""
        import sys
        from quantsweep.cli.main import main
        assert main(["sweep", "--model", {str(tiny_checkpoint)!r}, "--images", {str(tiny_data)!r},
                     "--imgsz", "{TINY_IMGSZ}", "--max-images", "2", "--layers", "model.22.cv2.*",
                     "--out", {str(tmp_path)!r}]) == 0
        import quantsweep.cli.run, quantsweep.workflow, quantsweep.execution.local
        assert "ray" not in sys.modules, "the local path imported ray"
        print("no ray")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=False
    )
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr[-2000:]
    (run,) = tmp_path.glob("*_layer_sensitivity/*")
    assert (run / "executors.jsonl").read_text().count('"executor": "local"') == 2


def test_local_map_tasks_in_order_with_host_and_device() -> None:
    with create_executor() as executor:
        results = list(executor.map_tasks(lambda x: (x * 2, os.getpid()), [4, 5, 6]))
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.value for r in results] == [(8, os.getpid()), (10, os.getpid()), (12, os.getpid())]
    assert all(r.host == socket.gethostname() and r.device.startswith("cpu") for r in results)


def test_ray_executor_without_ray_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InputError, match=r"pip install 'quantsweep\[ray\]'"):
        create_executor(ExecutorConfig(kind=ExecutorKind.RAY))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--executor", "spark"], "unknown executor 'spark'; valid: local, ray"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
        (["--executor", "ray", "--worker-threads", "0"], "--worker-threads must be positive"),
    ],
)
def test_bad_executor_flags_exit_2(flags, message, tiny_data, capsys) -> None:
    assert main(["sweep", "--images", str(tiny_data), *flags]) == 2
    assert message in capsys.readouterr().err
