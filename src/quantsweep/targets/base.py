"""What a deployment target is: what it runs fast, how it writes Q/DQ, how it loads and runs a model.

Stages talk to targets only through :class:`Backend`; each target is one module in this package,
registered by name (see ``quantsweep.targets``).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from quantsweep.core.config import HeadMode, QuantFormat
from quantsweep.core.errors import InputError
from quantsweep.onnx_graph.calibration import RangeSource
from quantsweep.onnx_graph.placement import Placement, apply_placement
from quantsweep.quant.producer_quant import ProducerQuant
from quantsweep.quant.weights import QuantizedWeight
from quantsweep.schemes.scheme_records import Precision


@dataclass(frozen=True)
class ModelSource:
    """The run's model as more than a Q/DQ graph: what a third-party tool needs to make its artifact
    as a user would, and what a target whose runtime loads another format (made from the Torch
    model, not from the ONNX) needs to write its artifacts."""

    fp32_path: Path  # the FP32 ONNX quantsweep exported
    images: torch.Tensor  # the calibration images, letterboxed
    model: Path  # the checkpoint (or YAML) the user gave
    calib_paths: tuple[Path, ...]  # the same calibration images, as files
    imgsz: int
    head: HeadMode = HeadMode.AUTO  # the detection branch the FP32 ONNX was exported with


# writes a third-party baseline artifact at (or beside) the given ``.onnx`` path; returns the
# file a deployer loads
BaselineWriter = Callable[[ModelSource, Path], Path]


class ConvKind(enum.StrEnum):
    """Kinds of weighted node whose kernels differ between runtimes."""

    REGULAR = "regular"
    GROUPED = "grouped"
    DEPTHWISE = "depthwise"
    FIRST = "first"  # reads the image: 3 input channels, no fast low-precision kernel on some GPUs
    LINEAR = "linear"


class Objective(enum.StrEnum):
    """What a target's recommendation optimizes within the accuracy target."""

    SPEED = "speed"
    SIZE = "size"


@dataclass(frozen=True)
class LoadPath:
    """One way of loading an artifact in a runtime; ``deployed``: the way the deploy line says."""

    load: Callable[[], Runner]
    deployed: bool
    note: str = ""


@dataclass(frozen=True)
class Availability:
    """Whether the target's runtime can load and time models on this machine, and why not."""

    available: bool
    reason: str = ""


class Runner(abc.ABC):
    """A loaded model in its runtime: batch-1 inference on a preprocessed image."""

    device: str = "cpu"

    @abc.abstractmethod
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The first output for one ``[1, 3, H, W]`` float32 image."""

    def run_all(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The first output of each ``[1, 3, H, W]`` image, in order: the outputs ``__call__`` gives.
        A runner made for scoring (:meth:`Backend.load_for_scoring`) may run several at once."""
        return [self(image) for image in images]

    def input_size(self) -> tuple[int, int] | None:
        """The static input height and width, when the model has one."""
        return None

    def float_precision(self) -> str | None:
        """The precision the runtime runs the non-quantized ops in (``f32``, ``bf16``), when it says."""
        return None

    def intermediates(self, image: np.ndarray, tensors: Sequence[str]) -> dict[str, np.ndarray] | None:
        """Values of the named graph tensors for one image, as this runtime computes them; None where
        the runtime cannot expose intermediate outputs. Used to find where an artifact departs."""
        return None

    def node_times(self, image: np.ndarray, *, runs: int = 20, warmup: int = 5) -> dict[str, float] | None:
        """Milliseconds per inference spent in each executed node, keyed by the name the runtime
        reports (fused nodes carry the ONNX names they came from), summed over ``runs`` inferences
        after ``warmup`` runs and divided by ``runs``; None where the runtime has no per-node
        profiler. Prices float islands (evaluation/island_costs.py)."""
        return None


def onnx_source(artifact: Path) -> Path:
    """The Q/DQ ONNX an artifact was made from: every target keeps it beside the artifact, same stem
    (for an ONNX artifact it is the artifact itself)."""
    return Path(artifact).with_suffix(".onnx")


def conv_kinds(model: onnx.ModelProto) -> dict[str, ConvKind]:
    """The kind of every weighted node of ``model`` (by its attributes and where its input comes from)."""
    graph_inputs = {i.name for i in model.graph.input}
    inits = {i.name: i for i in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            kinds[node.name] = ConvKind.LINEAR
        if node.op_type != "Conv":
            continue
        if node.input[0] in graph_inputs:
            kinds[node.name] = ConvKind.FIRST
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        out_channels = inits[node.input[1]].dims[0] if node.input[1] in inits else 0
        if group == 1:
            kinds[node.name] = ConvKind.REGULAR
        elif group == out_channels:
            kinds[node.name] = ConvKind.DEPTHWISE
        else:
            kinds[node.name] = ConvKind.GROUPED
    return kinds


class Backend(abc.ABC):
    """One deployment target: a runtime, the formats it runs fast, and its Q/DQ placement."""

    name: str
    runtime: str
    objective: Objective
    description: str
    placement: Placement = Placement()
    # the runtime fuses the requantization at a float conv's borders into the conv (OpenVINO), so
    # the convs it profiles faster in float are worth timing kept float together; where it does
    # not (ONNX Runtime: a QuantizeLinear per border; 1.008-1.052x nothing kept in seven runs of
    # both testbeds on an AMX Xeon), that set never pays and is not tried (search_opening.py)
    fuses_island_borders: bool = False

    @abc.abstractmethod
    def sweep_formats(self) -> tuple[QuantFormat, ...]:
        """The sweep combinations whose ranking drives this target's schemes."""

    @abc.abstractmethod
    def fast_precisions(self, kind: ConvKind) -> frozenset[str]:
        """Precision labels (``int8-int8``, ...) this runtime executes fast for ``kind``."""

    def runs(self) -> frozenset[str]:
        """Every precision label this target runs fast on some kind of node."""
        return frozenset().union(*(self.fast_precisions(kind) for kind in ConvKind))

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Can this machine load and run the target's artifacts?"""

    def writable(self) -> Availability:
        """Can this machine write the target's artifacts? (TensorRT's are written anywhere and only
        run on a GPU; a target whose converter is an optional extra needs it installed.)"""
        return Availability(True)

    def write(
        self,
        fp32: onnx.ModelProto,
        plan: Mapping[str, Precision],
        *,
        ranges: RangeSource,
        weights: Mapping[str, QuantizedWeight] | None = None,
        producers: Sequence[ProducerQuant] = (),
    ) -> onnx.ModelProto:
        """``fp32`` with ``plan`` (ONNX node -> precision) applied in this runtime's Q/DQ placement;
        ``weights`` (ONNX node -> quantizer record) are the codes the Torch simulation used, and
        ``producers`` the tensors it quantizes where they are made."""
        return apply_placement(
            fp32, plan, ranges=ranges, placement=self.placement, weights=weights, producers=producers
        )

    @abc.abstractmethod
    def load(self, path: Path) -> Runner:
        """The artifact loaded in this target's runtime, with the settings it is measured and deployed
        with (float parts at the runtime's default precision on this machine)."""

    def load_for_scoring(self, path: Path) -> Runner:
        """The artifact loaded to score many images: the outputs :meth:`load`'s runner gives, bit for
        bit, but requests may overlap (several at once, each on a share of the cores), which only
        throughput gains from; never used for timing. Defaults to :meth:`load`."""
        return self.load(path)

    def save(self, model: onnx.ModelProto, path: Path, *, source: ModelSource | None = None) -> Path:
        """Write ``model`` (a Q/DQ ONNX) as this target's artifact; return the file a deployer loads.

        ``path`` ends in ``.onnx``; the Q/DQ ONNX is always written there (see :func:`onnx_source`),
        and a target whose runtime loads another format makes it beside it, from the ONNX or, with
        ``source`` (every stage passes it), from the run's model and calibration images.
        """
        onnx.save(model, str(path))
        return path

    def float_run_key(self) -> str:
        """Targets that return the same key run an FP32 model identically (runtime, device, float
        precision and every setting that matters for a float graph): its score is measured once."""
        return self.name

    def artifact_bytes(self, artifact: Path) -> int:
        """What the deployed artifact weighs on disk (every file of it)."""
        return Path(artifact).stat().st_size

    def verification_loads(self, artifact: Path) -> dict[str, LoadPath]:
        """Every way a user loads the artifact in this runtime, each with float parts at full
        precision (what the Torch simulation computes), for the runtime check against Torch."""
        return {"default": LoadPath(lambda: self.load(artifact), deployed=True)}

    def baselines(self) -> dict[str, BaselineWriter]:
        """Artifacts made by the runtime's own tools, scored beside quantsweep's (none by default)."""
        return {}

    def written_counts(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Per-precision node counts of a plan as they read back from the written file."""
        written: dict[str, int] = {}
        for label, count in counts.items():
            key = self.placement.written_label(label)
            written[key] = written.get(key, 0) + count
        return dict(sorted(written.items()))

    def deploy_hint(self, path: Path) -> str:
        """How a deployer loads ``path`` with the settings it was measured with."""
        return f"load {path} in {self.runtime}"

    def weight_codes_note(self, artifact: Path) -> str | None:
        """Which CPUs execute ``artifact``'s integer weights as Torch simulated them, where that
        depends on the CPU (x86 without VNNI saturates full-range INT8: core/hardware.py); None
        where it does not or the file is not here."""
        return None

    def adapt_plan(
        self, plan: Mapping[str, Precision], kinds: Mapping[str, ConvKind]
    ) -> dict[str, Precision]:
        """The plan as this target writes it.

        A scheme's low precision is uniform; a node of a kind this target runs in no low precision
        at all (ONNX Runtime's Linear layers) stays float, and a target whose kernels for some node
        kinds exist in another precision only (TensorRT: no FP8 depthwise convs) moves those nodes
        there. Stages call it before :meth:`check_plan` and :meth:`write`, and verify against its
        result.
        """
        adapted = dict(plan)
        for node, precision in plan.items():
            if precision.weight is not None and not self.fast_precisions(kinds.get(node, ConvKind.REGULAR)):
                adapted[node] = Precision(None)
        return adapted

    def check_plan(self, plan: Mapping[str, Precision], kinds: Mapping[str, ConvKind]) -> None:
        """Refuse, in one line, a plan with precisions this target cannot run."""
        for node, precision in plan.items():
            if precision.weight is None:
                continue
            kind = kinds.get(node, ConvKind.REGULAR)
            if precision.label not in self.fast_precisions(kind):
                allowed = ", ".join(sorted(self.fast_precisions(kind))) or "none"
                raise InputError(
                    f"target {self.name} cannot run {precision.label} on {kind.value} node {node} "
                    f"(it runs: {allowed}, or float)"
                )
