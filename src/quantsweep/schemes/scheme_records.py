"""Scheme records: every quantizable layer with its ONNX node and assigned precision."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.quant.numerics import weight_bits

FLOAT_BITS = 32  # a layer kept in float is stored as FP32 in the artifacts


class Policy(enum.StrEnum):
    """How an artifact's plan was made: a scheme policy (which layers are kept), the search, the
    FP32 reference, or a baseline made by another tool."""

    TOP_K = "top_k"
    BUDGET = "budget"
    RANDOM = "random"
    FIRST_HEAD = "first_head"
    SEARCH = "search"
    FP32 = "fp32"
    BASELINE = "baseline"

    @property
    def is_scheme(self) -> bool:
        """A plan written by the schemes stage (as opposed to the reference, a baseline or the search)."""
        return self in (Policy.TOP_K, Policy.BUDGET, Policy.RANDOM, Policy.FIRST_HEAD)

    @property
    def is_reference(self) -> bool:
        """A reference scheme (random, first+head): the sensitivity ranking is compared with it at its K."""
        return self in (Policy.RANDOM, Policy.FIRST_HEAD)


FP32_NAME = "fp32"  # the FP32 reference artifact's name in every target's results


@dataclass(frozen=True)
class Precision:
    """What one layer runs at; ``weight=None`` keeps it in float (no Q/DQ at all)."""

    weight: WeightDtype | None
    act: ActDtype = ActDtype.FP16
    granularity: Granularity = Granularity.PER_CHANNEL
    int4_block_size: int | None = None

    @property
    def label(self) -> str:
        """Short form such as ``int4-fp16`` or ``float``."""
        return "float" if self.weight is None else f"{self.weight.value}-{self.act.value}"

    @property
    def weight_bits(self) -> int:
        """Bits per stored weight."""
        return FLOAT_BITS if self.weight is None else weight_bits(self.weight)

    def as_format(self) -> QuantFormat | None:
        """The fake-quant format, or None for a float layer."""
        if self.weight is None:
            return None
        return QuantFormat(self.weight, self.act, self.granularity, self.int4_block_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "weight": None if self.weight is None else self.weight.value,
            "act": self.act.value,
            "granularity": self.granularity.value,
            "int4_block_size": self.int4_block_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Precision:
        """Inverse of :meth:`to_dict`."""
        return cls(
            weight=None if data["weight"] is None else WeightDtype(data["weight"]),
            act=ActDtype(data["act"]),
            granularity=Granularity(data["granularity"]),
            int4_block_size=data.get("int4_block_size"),
        )


@dataclass(frozen=True)
class LayerAssignment:
    """One quantizable layer in a scheme."""

    torch_name: str
    onnx_node: str
    precision: Precision
    sensitivity: float | None
    rank: int | None
    params: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.__dict__, "precision": self.precision.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerAssignment:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "precision": Precision.from_dict(data["precision"])})


@dataclass(frozen=True)
class Scheme:
    """A candidate: which layers stay at high precision and what every layer runs at."""

    name: str
    policy: Policy
    kept_layers: tuple[str, ...]
    layers: tuple[LayerAssignment, ...]

    @property
    def avg_weight_bits(self) -> float:
        """Average stored bits per weight over all quantizable parameters."""
        total = sum(a.params for a in self.layers)
        return sum(a.params * a.precision.weight_bits for a in self.layers) / max(total, 1)

    @property
    def nodes_to_exclude(self) -> list[str]:
        """ONNX nodes of the kept layers (the list ModelOpt and ONNX Runtime take)."""
        kept = set(self.kept_layers)
        return [a.onnx_node for a in self.layers if a.torch_name in kept]

    def precision_counts(self) -> dict[str, int]:
        """How many layers run at each precision label."""
        counts: dict[str, int] = {}
        for a in self.layers:
            counts[a.precision.label] = counts.get(a.precision.label, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "policy": self.policy.value,
            "kept_layers": list(self.kept_layers),
            "avg_weight_bits": self.avg_weight_bits,
            "precision_counts": self.precision_counts(),
            "layers": [a.to_dict() for a in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scheme:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=data["name"],
            policy=Policy(data["policy"]),
            kept_layers=tuple(data["kept_layers"]),
            layers=tuple(LayerAssignment.from_dict(a) for a in data["layers"]),
        )
