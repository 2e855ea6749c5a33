"""One artifact's whole verification: the file's checks and its own runtime's agreement with Torch.

Materialize runs this on every artifact it writes, and the evaluate stage on every artifact it
writes itself (search finalists, schemes whose writing was deferred until they were needed), so an
artifact carries the same verify record whichever stage wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantsweep.evaluation.artifact_checks import verify_artifact
from quantsweep.evaluation.runtime_check import check_on_runtime, deployed_agrees, summary_line
from quantsweep.targets.base import Backend, onnx_source

LOG = logging.getLogger(__name__)
VERIFY_IMAGES = 4  # Torch-vs-ONNX agreement needs a few images, not the whole calibration set


def artifact_verdict(
    path: Path,
    *,
    backend: Backend | None,
    images: torch.Tensor,
    torch_output: np.ndarray,
    expected_counts: Mapping[str, int] | None,
    fp32_bytes: int,
    located: set[str],
) -> dict[str, Any]:
    """The verify record of ``path`` (ONNX checker, counts, ONNX Runtime, Torch agreement) and, for
    a target's artifact, every way its own runtime loads it checked against the same Torch output.

    ``located``: targets whose non-deployed load paths were already located node by node (once per
    target says where that path departs for the placement); updated here.
    """
    checked, as_written = verify_artifact(
        onnx_source(path),
        expected_counts=expected_counts,
        images=images,
        torch_output=torch_output,
        fp32_bytes=fp32_bytes,
    )
    if backend is None:
        return checked
    size = backend.artifact_bytes(path)
    checked |= {"file": path.name, "size_bytes": size, "fp32_over_size": fp32_bytes / size}
    available = backend.availability()
    if not available.available:  # e.g. TensorRT on a machine without it: said, not skipped silently
        checked["runtime"] = {"target": backend.name, "unavailable": available.reason}
        checked["runtime_summary"] = f"not run: {available.reason}"
        return checked
    checks = check_on_runtime(
        backend,
        path,
        images=images,
        torch_output=torch_output,
        locate_undeployed=backend.name not in located,
        as_written_output=as_written,
    )
    if any(not c.deployed and not c.passed for c in checks):
        located.add(backend.name)
    checked["runtime"] = {"target": backend.name, "loads": [c.to_dict() for c in checks]}
    checked["runtime_agrees"] = deployed_agrees(checks)
    checked["runtime_summary"] = summary_line(checks)
    for check in checks:  # a deployed load path that departs is a finding; another is a caveat
        if not check.passed:
            level = logging.WARNING if check.deployed else logging.INFO
            LOG.log(level, "%s %s: %s", backend.name, path.name, summary_line([check]))
    return checked
