"""Ultralytics' own INT8 export, run as a baseline, leaves the process as it found it."""

from __future__ import annotations

import os
import subprocess
import sys

import onnx
import torch

from quantsweep.data.images import resolve_images
from quantsweep.models.ultralytics_adapter import ONNX_INT8, export_int8


def test_importing_the_adapter_does_not_set_omp_threads_for_child_processes() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "import os, quantsweep.models.ultralytics_adapter; print(os.environ.get('OMP_NUM_THREADS'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None"


def test_onnx_int8_export_keeps_torch_threads(tiny_checkpoint, tiny_data, tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        calib = resolve_images(str(tiny_data)).paths[:2]
        path = export_int8(tiny_checkpoint, fmt=ONNX_INT8, calib_paths=calib, imgsz=64, work_dir=tmp_path)
        # Ultralytics sets min(8, cores - 1) threads while it exports; quantsweep's later passes
        # must get the threads back
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "DequantizeLinear" in ops or "QLinearConv" in ops
