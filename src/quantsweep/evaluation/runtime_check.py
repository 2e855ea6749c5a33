"""Does a target's runtime execute an artifact as the Torch simulation computes it?

The sweep ranks layers with Torch fake quantization and materialize checks each file in ONNX Runtime
with basic optimizations (the Q/DQ graph's own semantics); neither is the runtime that ships. Here
every way a user loads the artifact in its own runtime runs the verification images, with float
ops at full precision, and its outputs are compared with Torch's, box and score parts apart (a
score error hides under pixel-sized box values). ONNX Runtime running the same Q/DQ graph as written
sets the scale: rounding differences between integer kernels are fine, a runtime that departs by
several times more than that is executing something else. Where a load path fails, the first
weighted node whose output departs from ONNX Runtime's is named.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from quantsweep.evaluation.artifact_checks import canonical_rows, relative_l2
from quantsweep.onnx_graph.ort_sessions import SessionOptions
from quantsweep.targets.base import Backend, Runner, onnx_source
from quantsweep.targets.ort_cpu import OrtRunner

# a load path passes when each output part's error against Torch is at most FACTOR times ONNX
# Runtime's (as written) or below FLOOR. Measured: faithful runtimes stay within 1.1x of ONNX
# Runtime's error; OpenVINO's misexecuted Concat -> conv was 8x on YOLOv10s class scores.
FACTOR = 2.0
FLOOR = 0.05
DEPARTS = 0.05  # a node departs when its output differs from ONNX Runtime's by more than this
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class LoadCheck:
    """One load path's agreement with Torch, and where it departs when it does not agree."""

    load_path: str
    deployed: bool
    rel_l2: dict[str, float]  # per output part: runtime vs Torch
    reference_rel_l2: dict[str, float]  # per output part: ONNX Runtime as written vs Torch
    passed: bool
    float_precision: str | None
    first_departing_node: str | None = None
    departure: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def output_parts(output: np.ndarray, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Boxes and scores of a detector output: raw ``[N, 4+nc, A]`` rows, or ``[N, K, 6]`` columns."""
    rows = canonical_rows(output, model)
    if rows.ndim == 3 and rows.shape[-1] == 6 and rows.shape[1] != 6:
        return {"boxes": rows[..., :4], "scores": rows[..., 4]}
    return {"boxes": rows[:, :4], "scores": rows[:, 4:]}


def _outputs(runner: Runner, images: torch.Tensor) -> np.ndarray:
    return np.concatenate([runner(image[None].numpy()) for image in images])


def _as_written(source: Path) -> OrtRunner:
    return OrtRunner(source, SessionOptions(graph_as_written=True))


def _errors(output: np.ndarray, torch_output: np.ndarray, model: onnx.ModelProto) -> dict[str, float]:
    test, reference = output_parts(output, model), output_parts(torch_output, model)
    return {part: relative_l2(test[part], reference[part]) for part in reference}


def first_departing_node(
    runner: Runner, reference: Runner, model: onnx.ModelProto, image: np.ndarray
) -> tuple[str | None, float | None]:
    """The first weighted node (graph order) whose output in ``runner`` departs from ``reference``'s;
    ``(None, None)`` where none does or the runtime cannot expose intermediate outputs."""
    producers = [(n.name, n.output[0]) for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    tensors = [tensor for _, tensor in producers]
    found = runner.intermediates(image, tensors)
    expected = reference.intermediates(image, tensors)
    if found is None or expected is None:
        return None, None
    for node, tensor in producers:
        if tensor in found and tensor in expected:
            error = relative_l2(found[tensor], expected[tensor])
            if error > DEPARTS:
                return node, error
    return None, None


def check_on_runtime(
    backend: Backend,
    artifact: Path,
    *,
    images: torch.Tensor,
    torch_output: np.ndarray,
    locate_undeployed: bool = True,
    as_written_output: np.ndarray | None = None,
) -> list[LoadCheck]:
    """Every load path of ``artifact`` in ``backend``'s runtime against Torch's ``torch_output``.

    Where a path departs, the first departing node is found by comparing every conv output (a
    second pair of runs with every intermediate as an output: seconds per artifact on a detector);
    ``locate_undeployed=False`` skips that for load paths the target does not deploy.
    ``as_written_output``: ONNX Runtime's output of the graph as written on ``images``, where the
    caller has it already.
    """
    source = onnx_source(artifact)
    model = onnx.load(str(source), load_external_data=False)
    if as_written_output is None:
        as_written_output = _outputs(_as_written(source), images)
    reference = _errors(as_written_output, torch_output, model)
    checks = []
    for name, load in backend.verification_loads(artifact).items():
        runner = load.load()
        errors = _errors(_outputs(runner, images), torch_output, model)
        passed = all(errors[p] <= max(FLOOR, FACTOR * reference[p]) for p in errors)
        node, departure = (None, None)
        note = load.note
        if not passed and (load.deployed or locate_undeployed):
            first = images[0][None].numpy()
            node, departure = first_departing_node(runner, _as_written(source), model, first)
            if node is None and runner.intermediates(first, []) is None:
                note = (note + "; " if note else "") + "this runtime cannot expose intermediate outputs"
        checks.append(
            LoadCheck(
                load_path=name,
                deployed=load.deployed,
                rel_l2=errors,
                reference_rel_l2=reference,
                passed=passed,
                float_precision=runner.float_precision(),
                first_departing_node=node,
                departure=departure,
                note=note,
            )
        )
    return checks


def deployed_agrees(checks: list[LoadCheck]) -> bool:
    """Does every deployed load path agree with Torch?"""
    return all(c.passed for c in checks if c.deployed)


def summary_line(checks: list[LoadCheck]) -> str:
    """One line for a report: each load path's verdict and, where it departs, the node."""
    parts = []
    for check in checks:
        worst = max(check.rel_l2.values())
        verdict = "agrees with Torch" if check.passed else "DEPARTS from Torch"
        where = f" first at `{check.first_departing_node}`" if check.first_departing_node else ""
        deployed = "" if check.deployed else " (not the deployed path)"
        parts.append(f"{check.load_path}{deployed} {verdict} (rel. error {worst:.3f}){where}")
    return "; ".join(parts)
