"""What a float island costs on the target's runtime, and the order the search tries islands in.

A conv kept in float costs its own float time instead of its INT8 time, on every inference. The
runtime's per-node profiler (``Runner.node_times``) prices that without writing one artifact per
layer: the FP32 model and the nothing-kept artifact are each profiled once, every executed node is
charged to the conv unit (the conv, its activation, the Q/DQ fused into them) whose node name it
carries, and a unit's cost is its float time minus its INT8 time. Nodes no conv owns (a C2f's
Concat, the decode) are left out. The estimate does not see the requantization an island adds at
its borders; the evaluate stage's timing pass measures the finalists whole.

Before recovery (minutes of fine-tuning) the search tries the two most sensitive islands the
runtime prices at nothing (``free_probes``: one evaluation each); if one alone meets the target,
timed whole at no cost, recovery is not run. Then it tries islands in the order of accuracy bought
per millisecond: the sweep's sensitivity of a layer (its Torch-measured damage when it alone is
quantized) divided by its cost. A conv no slower in float (the 3-channel first conv on both CPU
runtimes, some depthwise convs in OpenVINO on a CPU without AMX) is priced at a small floor, so a
sensitive one comes first.

Keeping a conv float *because* it profiles faster in float pays only where the runtime fuses the
island's borders into it. ONNX Runtime does not: on YOLOv10s at 640 px its 3-channel first conv
profiles 1.2 ms faster in f32 than as QLinearConv, yet the whole model with it float ran at 0.581x
FP32 against 0.579x without (the QuantizeLinear its output then needs is the border cost the
profile cannot see), and on an AMX Xeon the 28 YOLOv10m convs it profiles faster in f32 (2.1 ms)
ran at 0.48x FP32 against nothing-kept's 0.46x. OpenVINO fuses the requantization into the float
conv, and on an AMX Xeon its INT8 3x3 convs with an activation zero point take up to 2.7x their
bf16 time: the 32 YOLOv10m convs it profiles faster in bf16 (3.3 of 18.7 ms) took the whole model
from 1.07x to 1.01x FP32 (YOLOv10s: 1.10-1.13x to 1.04-1.07x). On an AVX-512 EPYC without AMX the
12 such units save 0.04 ms in all. So the search takes the set (``faster_in_float``) only on a
runtime that fuses the borders (``Backend.fuses_island_borders``) and where the profile says it
saves a share of the INT8 time worth timing, times it whole against nothing kept, and makes it a
finalist only where it is faster whole (search_opening.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from quantsweep.core.config import IslandOrder
from quantsweep.onnx_graph.qdq_graph import readers_of
from quantsweep.schemes.scheme_records import LayerAssignment
from quantsweep.targets import Backend
from quantsweep.targets.timing import lower_quartile_ratios

PROFILE_RUNS = 20  # inferences profiled per model
PROFILE_WARMUP = 5  # runs before them (allocations settle within the first two or three)
FLOOR_SHARE = 0.1  # the least a float island is priced at, as a share of the median island cost
# an island costing at most this share of all conv units' INT8 time is free: tried before recovery
FREE_SHARE = 0.01
FREE_PROBES = 2  # free islands tried, most sensitive first (the profile's noise can swap them)
# ... and accepted when the whole model with it, timed in PROBE_ROUNDS rounds of 5 runs, is at most
# timing.SAME_TIME_SHARE slower (about 2 s on YOLOv10s at 320 px, 4 s on YOLOv10m)
PROBE_ROUNDS = 15
# a conv runs faster in float when its float time is at most this share of its INT8 time; the
# convs that do are timed whole as one set where together they save at least FASTER_SET_SHARE of
# the conv units' INT8 time (see the module's docstring for what that found on three CPUs)
FASTER_SHARE = 0.9
FASTER_SET_SHARE = 0.05


# ops before a conv that run in its precision when only it reads them (see conv_units)
FEEDER_OPS = frozenset({"Softmax", "Transpose", "Reshape", "Flatten", "Concat"})
ACTIVATION_OPS = frozenset(
    {"Relu", "Sigmoid", "Mul", "HardSigmoid", "HardSwish", "LeakyRelu", "Clip", "Tanh"}
)


def conv_units(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Per conv node, the ONNX nodes that run in its precision: the conv, the activation that reads
    only its output (SiLU is ``Mul(x, Sigmoid(x))``), which runtimes fuse into it, and the ops that
    only feed it (a C2f's Concat, the DFL's Softmax): they run on codes or in float with it (ONNX
    Runtime's Softmax before the DFL conv takes 0.12 ms feeding a QuantizeLinear and 0.75 ms
    feeding a float conv, YOLOv10s at 320 px)."""
    readers = readers_of(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    units = {}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        members, produced, frontier = [conv.name], set(conv.output), list(conv.output)
        while frontier:
            for reader in readers.get(frontier.pop(), []):
                inside = all(i in produced or i in constants or not i for i in reader.input)
                if reader.op_type in ACTIVATION_OPS and inside and reader.name not in members:
                    members.append(reader.name)
                    produced.update(reader.output)
                    frontier.extend(reader.output)
        units[conv.name] = members + _feeders(conv, readers, producer)
    return units


def _feeders(conv: onnx.NodeProto, readers, producer) -> list[str]:
    """The chain of ``FEEDER_OPS`` right before ``conv`` that only it reads, up to and including
    a Concat (whose inputs are other units' outputs)."""
    found, reader, tensor = [], conv.name, conv.input[0]
    while (node := producer.get(tensor)) is not None and node.op_type in FEEDER_OPS:
        if [r.name for r in readers.get(tensor, [])] != [reader] or len(node.output) != 1:
            break
        found.append(node.name)
        if node.op_type == "Concat":
            break
        reader, tensor = node.name, node.input[0]
    return found


def unit_times(node_times: Mapping[str, float], units: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Milliseconds per conv unit: each executed node goes to the unit with the longest ONNX node name
    that its name contains (runtimes name fused and reordered nodes after the nodes they came from:
    ``/model.0/conv/Conv/WithoutBiases``, ``/model.0/conv/Conv_token_9``,
    ``images/q_DQ_/model.0/conv/Conv``)."""
    names = sorted(
        ((member, conv) for conv, members in units.items() for member in members), key=lambda m: -len(m[0])
    )
    times = {conv: 0.0 for conv in units}
    for name, ms in node_times.items():
        owner = next((conv for member, conv in names if _carries(name, member)), None)
        if owner is not None:
            times[owner] += ms
    return times


def _carries(name: str, member: str) -> bool:
    """``member`` occurs in ``name`` not as the stem of a sibling (``Concat`` in ``Concat_1``)."""
    start = name.find(member)
    while start >= 0:
        rest = name[start + len(member) :]
        if not re.match(r"_?\d", rest):
            return True
        start = name.find(member, start + 1)
    return False


@dataclass(frozen=True)
class IslandCosts:
    """Per conv (ONNX node), milliseconds per inference in float and in INT8 on one runtime."""

    runtime: str
    float_ms: dict[str, float]
    int8_ms: dict[str, float]

    def cost(self, node: str) -> float:
        """Milliseconds one inference gains when ``node`` is kept in float (negative: float is faster)."""
        return self.float_ms.get(node, 0.0) - self.int8_ms.get(node, 0.0)

    def cost_of(self, kept: Iterable[str], nodes: Mapping[str, str]) -> float:
        """What keeping the layers ``kept`` (Torch names; ``nodes`` maps them to ONNX nodes) in float
        adds per inference, by the profile: the sum of their units' costs."""
        return sum(self.cost(nodes[name]) for name in kept)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"runtime": self.runtime, "float_ms": self.float_ms, "int8_ms": self.int8_ms}

    @classmethod
    def from_dict(cls, data: dict) -> IslandCosts:
        """Inverse of :meth:`to_dict`."""
        return cls(data["runtime"], dict(data["float_ms"]), dict(data["int8_ms"]))


def measure_island_costs(
    backend: Backend,
    *,
    float_path: Path,
    int8_path: Path,
    units: Mapping[str, Sequence[str]],
    image: np.ndarray,
) -> IslandCosts | None:
    """``IslandCosts`` from one profile of the FP32 model (as the runtime runs it by default) and one
    of the nothing-kept artifact on ``backend``'s runtime; None where the runtime has no profiler."""
    profiles = []
    for path in (float_path, int8_path):
        times = backend.load(path).node_times(image, runs=PROFILE_RUNS, warmup=PROFILE_WARMUP)
        if times is None:
            return None
        profiles.append(unit_times(times, units))
    return IslandCosts(backend.runtime, *profiles)


def whole_model_ratio(backend: Backend, *, int8_path: Path, island_path: Path, image: np.ndarray) -> float:
    """The island artifact's time over the nothing-kept one's, timed whole and interleaved on
    ``backend``'s runtime (lower quartiles, ``timing.lower_quartile_ratios``): what the profile
    cannot see (requantization at the island's borders, an op before it that runs slower feeding a
    float conv) shows here."""
    runners = {"k0": backend.load(int8_path), "island": backend.load(island_path)}
    return lower_quartile_ratios(runners, image, reference="k0", rounds=PROBE_ROUNDS)["island"]


def island_order(
    ranking: Sequence[LayerAssignment], costs: IslandCosts | None, *, order: IslandOrder
) -> list[LayerAssignment]:
    """The layers in the order the search keeps them float: the ranking itself (``rank``, or no costs),
    else the sweep's sensitivity per millisecond, best first. A cost is at least ``FLOOR_SHARE`` of
    the median positive cost: a unit no slower in float still adds requantization at its borders,
    and noise must not divide by zero. Layers the sweep did not measure stay last."""
    if order is IslandOrder.RANK or costs is None:
        return list(ranking)
    positive = [c for c in (costs.cost(a.onnx_node) for a in ranking) if c > 0]
    floor = max(FLOOR_SHARE * float(np.median(positive)), 1e-6) if positive else 1.0

    def key(a: LayerAssignment) -> tuple[int, float]:
        gain = a.sensitivity or 0.0
        if gain <= 0.0:
            return (1, 0.0)
        return (0, -gain / max(costs.cost(a.onnx_node), floor))

    return sorted(ranking, key=key)  # stable: equal keys keep the ranking's order


def free_probes(
    ranking: Sequence[LayerAssignment], costs: IslandCosts | None, *, count: int = FREE_PROBES
) -> list[str]:
    """The ``count`` most sensitive layers (Torch names) whose island costs at most ``FREE_SHARE`` of
    the conv units' INT8 time, most sensitive first: an evaluation each that may spare the search
    its recovery (YOLOv10s at 640 px: the DFL conv alone takes nothing-kept from 97.6% to 100.4% of
    FP32). More than one, because a cost near the budget is within the profile's noise: on YOLOv10s
    in ONNX Runtime one run's profile let `model.2.cv1.conv` in (+0.115 ms), which then timed whole
    at 1.041x nothing kept, and the 145 s recovery ran where the next free island (+0.006 ms) meets
    the target at no cost, as another run's profile had found."""
    if costs is None:
        return []
    budget = FREE_SHARE * sum(costs.int8_ms.values())
    free = [a for a in ranking if (a.sensitivity or 0.0) > 0 and costs.cost(a.onnx_node) <= budget]
    return [a.torch_name for a in sorted(free, key=lambda a: -a.sensitivity)[:count]]


def faster_in_float(ranking: Sequence[LayerAssignment], costs: IslandCosts | None) -> tuple[str, ...]:
    """The layers (Torch names, in ranking order) whose conv unit the runtime profiles faster in
    float than in INT8 (float time at most ``FASTER_SHARE`` of INT8's), where together they save at
    least ``FASTER_SET_SHARE`` of the conv units' INT8 time; else none. A candidate to time whole,
    not a saving: the borders the set adds are not in the profile."""
    if costs is None:
        return ()
    faster = [
        a
        for a in ranking
        if costs.int8_ms.get(a.onnx_node, 0.0) > 0
        and a.onnx_node in costs.float_ms
        and costs.float_ms[a.onnx_node] <= FASTER_SHARE * costs.int8_ms[a.onnx_node]
    ]
    saving = -sum(costs.cost(a.onnx_node) for a in faster)
    if saving < FASTER_SET_SHARE * sum(costs.int8_ms.values()):
        return ()
    return tuple(a.torch_name for a in faster)
