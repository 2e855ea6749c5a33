"""What this CPU's integer kernels can do, read from its instruction-set flags (``runs.cpu_flags``).

x86 CPUs without VNNI (AVX2 or AVX-512 only; AMD Zen 1-3, Intel before Cascade Lake) multiply
UINT8 x INT8 with ``vpmaddubsw``, which adds neighbouring products in saturating 16-bit lanes:
two full-range products (255 * 127 * 2 = 64770) overflow it. ONNX Runtime's QLinearConv and
OpenVINO's CPU plugin both take that path there, so a full-range INT8 weight is executed as a
different number than Torch simulates (measured: tests/core/test_hardware.py, docs/decisions.md).
Weights whose codes stay within -64..63 cannot overflow (255 * 64 * 2 = 32640), so the CPU
targets quantize to :attr:`WeightDtype.INT7` on every x86 CPU by default
(``portable_int8_weights``): an artifact built on a VNNI machine may run on one without it. VNNI
(``vpdpbusd``, 32-bit accumulation) and AMX do not saturate; neither do ARM's dot-product
instructions.
"""

from __future__ import annotations

import os
import platform

from quantsweep.core.config import WeightDtype
from quantsweep.core.runs import cpu_flags

# platform.machine() names of x86 CPUs, the only ones whose UINT8 x INT8 products can saturate
_X86_MACHINES = frozenset({"x86_64", "amd64", "i686", "x86"})
# any of these gives 32-bit accumulation of UINT8 x INT8 products
_EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})


def int8_products_saturate(flags: frozenset[str] | None = None) -> bool:
    """True on an x86 CPU whose UINT8 x INT8 dot products saturate (no VNNI, no AMX)."""
    if platform.machine().lower() not in _X86_MACHINES:
        return False
    flags = cpu_flags() if flags is None else flags
    return not flags & _EXACT_INT8_FLAGS


def cpu_int8_weights(flags: frozenset[str] | None = None) -> WeightDtype:
    """The weight type CPU runtimes execute exactly here: INT8, or INT7 where products saturate."""
    return WeightDtype.INT7 if int8_products_saturate(flags) else WeightDtype.INT8


def portable_int8_weights(machine: str | None = None) -> WeightDtype:
    """The weight type the CPU targets write by default: INT7 on x86, which every x86 CPU executes
    exactly, with VNNI or without; INT8 elsewhere (ARM's dot products do not saturate).

    The machine that builds an artifact is often not the one that runs it. Measured (fifteenth
    session, OpenVINO at f32, ``benchmarks/without_vnni.py``): full-INT8 ``k0`` artifacts built here
    lose 0.022 (YOLOv10m) and 0.043 (YOLOv10s) mAP50-95 on the kernels of a CPU without VNNI, INT7
    ones nothing; on this VNNI CPU INT7 costs 0.000-0.003 in OpenVINO and gains 0.001 in ONNX
    Runtime. ``--weights int8`` keeps full INT8 for CPUs known to have VNNI or AMX."""
    machine = (machine or platform.machine()).lower()
    return WeightDtype.INT7 if machine in _X86_MACHINES else WeightDtype.INT8


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
