"""The moves the search weighs when nothing-kept misses the accuracy target, each as measured.

Two kinds of move buy back accuracy. A float island (convs kept in float) costs time on every
inference; recovery (fine-tuning the quantized weights, ``search_recovery.py``) costs seconds once
and nothing per inference. The search measures every move it makes on the target's runtime and
records it here: the score before and after, the time per inference it adds (the runtime's
per-conv profile, and the whole model timed against nothing kept where that was done) and the
seconds it took once. It chooses by cost in that order: what the deployment pays on every
inference first, then the one-time seconds, so the cheapest move to try that may cost nothing per
inference (one island the profile prices at nothing: one evaluation) goes before recovery
(minutes), and islands beyond it go in the order of gain per millisecond (``island_costs.py``).
Where an island met the target alone but cost time per inference and recovery then ran, both
paths become finalists and the evaluate stage's timing pass picks the faster: the choice between
recovery and islands is made on measured time, not assumed. Where nothing-kept already meets the
target, the free island is still tried once, and is a finalist where it scores higher: the timing
pass times it beside nothing kept, and the recommendation prefers the more accurate of models
timed alike (median and lower quartile within 2%). Where the runtime profiles enough convs faster
in float than in INT8 (OpenVINO's zero-point 3x3 convs on an AMX Xeon), those convs kept float
together are timed whole against nothing kept, and scored and made a finalist only where faster.
The report prints the ledger.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from quantsweep.targets.timing import SAME_TIME_SHARE


class MoveKind(enum.StrEnum):
    """What a search move changes."""

    ISLAND = "island"  # one or more convs kept in float, on the records the move started from
    RECOVERY = "recovery"  # the quantized weights fine-tuned; nothing kept in float
    # every conv the runtime profiles faster in float than in INT8, kept float together
    FASTER_IN_FLOAT = "faster_in_float"


@dataclass(frozen=True)
class SearchMove:
    """One move the search made on a target, as measured on the target's runtime."""

    kind: MoveKind
    label: str  # the recovery method, or the kept layers joined by ", "
    score_before: float  # the score of the model the move started from
    score: float | None  # the score after the move; None: not scored (timed whole and not faster)
    met: bool  # the score meets the accuracy target
    per_inference_ms: float | None  # added time per inference by the profile; None: not priced
    seconds: float  # one-time cost of making and measuring the move (0: read back on resume)
    x_nothing_kept: float | None = None  # the whole model timed against nothing kept, where timed
    recovered: bool = False  # an island move searched on recovered weights
    finalist: str | None = None  # the model the move became, timed by the evaluate stage
    outcome: str = ""  # why it was taken or passed over, in words

    @property
    def gain(self) -> float | None:
        """Score gained over the model the move started from (None: not scored)."""
        return None if self.score is None else self.score - self.score_before

    @property
    def kept(self) -> tuple[str, ...]:
        """The layers an island move keeps float (empty for recovery)."""
        return () if self.kind is MoveKind.RECOVERY else tuple(self.label.split(", "))

    @property
    def free(self) -> bool:
        """Costs no inference time: recovery, or an island timed whole within ``SAME_TIME_SHARE``."""
        if self.kind is MoveKind.RECOVERY:
            return True
        return self.x_nothing_kept is not None and self.x_nothing_kept <= 1.0 + SAME_TIME_SHARE

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**dataclasses.asdict(self), "kind": self.kind.value}

    @classmethod
    def from_dict(cls, data: dict) -> SearchMove:
        """Inverse of :meth:`to_dict` (the report's reader of ``search.json``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"search move has unknown fields {sorted(unknown)}")
        return cls(**{**data, "kind": MoveKind(data["kind"])})


def read_moves(data: Sequence[dict] | None) -> list[SearchMove]:
    """The moves of a ``search.json`` (none for a search from before the ledger existed)."""
    return [SearchMove.from_dict(d) for d in data or ()]


def island_label(kept: Sequence[str]) -> str:
    """The label of an island move: its layers, as the search kept them."""
    return ", ".join(kept)


def paths_to_time(moves: Sequence[SearchMove]) -> list[SearchMove]:
    """Island moves that met the target alone on the records as quantized, but not for free,
    when recovery then ran and gained: the timing pass must weigh them against the recovered path
    (recovery gains nothing per inference only if the recovered model needs no costlier islands)."""
    recovered = any(m.kind is MoveKind.RECOVERY and (m.gain or 0.0) > 0 for m in moves)
    if not recovered:
        return []
    return [m for m in moves if m.kind is MoveKind.ISLAND and not m.recovered and m.met and not m.free]
