"""The candidates index: what the materialize stage wrote, per deployment target, read back checked.

``candidates.json`` is the contract between materialize and evaluate/search/report: every stage
that reads it goes through :func:`read_candidates`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantsweep.core.errors import InputError
from quantsweep.core.records import read_json, write_json

CANDIDATES_KIND = "candidates_index"
CANDIDATES_FILE = "candidates.json"
FP32_FILE = "fp32.onnx"


@dataclass(frozen=True)
class Artifact:
    """One written model of one target."""

    name: str
    file: str  # relative to the candidates directory
    policy: str  # fp32, top_k, budget, random, first_head, baseline
    kept_layers: tuple[str, ...] | None
    size_bytes: int | None  # None until written (deferred)
    avg_weight_bits: float | None  # None for a third-party export
    counts_match: bool | None
    torch_vs_onnx_rel_l2: float | None
    # every deployed load path in the target's own runtime agrees with Torch (None: not checked)
    runtime_agrees: bool | None = None
    runtime_summary: str | None = None  # one line per load path, for the report
    # planned, not written: the evaluate stage writes (and checks) it if it needs it (stages.eval_writes)
    deferred: bool = False

    @property
    def kept(self) -> int | None:
        """How many layers stay in float (None for FP32 and third-party baselines)."""
        return None if self.kept_layers is None else len(self.kept_layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["kept_layers"] = None if self.kept_layers is None else list(self.kept_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        """Inverse of :meth:`to_dict`."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if values["kept_layers"] is not None:
            values["kept_layers"] = tuple(values["kept_layers"])
        return cls(**values)


@dataclass
class TargetCandidates:
    """Every artifact of one deployment target, and where its schemes came from."""

    target: str
    schemes_dir: str
    combination: str
    artifacts: list[Artifact] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "target": self.target,
            "schemes_dir": self.schemes_dir,
            "combination": self.combination,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "failures": self.failures,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetCandidates:
        """Inverse of :meth:`to_dict`."""
        return cls(
            target=data["target"],
            schemes_dir=data["schemes_dir"],
            combination=data["combination"],
            artifacts=[Artifact.from_dict(a) for a in data["artifacts"]],
            failures=list(data["failures"]),
        )


@dataclass
class CandidatesIndex:
    """The whole materialize run: the FP32 model, the sweep it came from, and each target's artifacts."""

    sweep_dir: str
    imgsz: int
    targets: dict[str, TargetCandidates] = field(default_factory=dict)

    def write(self, run_dir: Path) -> None:
        """Rewrite ``candidates.json`` (called after every artifact, so a crash loses nothing finished)."""
        payload = {
            "sweep_dir": self.sweep_dir,
            "imgsz": self.imgsz,
            "fp32": FP32_FILE,
            "targets": {name: t.to_dict() for name, t in self.targets.items()},
        }
        write_json(run_dir / CANDIDATES_FILE, CANDIDATES_KIND, payload)


def read_candidates(candidates_dir: Path) -> CandidatesIndex:
    """The checked index of a candidates run directory (one clear error when it is not one)."""
    path = Path(candidates_dir) / CANDIDATES_FILE
    if not path.is_file():
        raise InputError(f"{candidates_dir} is not a candidates directory (no {CANDIDATES_FILE})")
    data = read_json(path, CANDIDATES_KIND)
    index = CandidatesIndex(
        sweep_dir=data["sweep_dir"],
        imgsz=data["imgsz"],
        targets={name: TargetCandidates.from_dict(t) for name, t in data["targets"].items()},
    )
    if not any(t.artifacts for t in index.targets.values()):
        raise InputError(f"{candidates_dir} holds no candidate models")
    return index
