"""The accuracy target: how much mAP50-95 a quantized model may lose against FP32, in one type."""

from __future__ import annotations

from dataclasses import dataclass

from quantsweep.core.config import DropMode
from quantsweep.core.errors import InputError


@dataclass(frozen=True)
class AccuracyTarget:
    """An allowed drop from the FP32 reference, relative (fraction of FP32) or absolute (mAP points)."""

    max_drop: float = 0.01
    mode: DropMode = DropMode.RELATIVE

    def __post_init__(self) -> None:
        if not (0 < self.max_drop < 1):
            raise InputError(f"--max-drop must be between 0 and 1, got {self.max_drop}")

    def threshold(self, reference: float) -> float:
        """The lowest mAP that meets the target for an FP32 model scoring ``reference``."""
        if self.mode is DropMode.RELATIVE:
            return reference * (1 - self.max_drop)
        return reference - self.max_drop

    def met(self, value: float | None, reference: float) -> bool:
        """Does ``value`` stay within the allowed drop? (a hair of float slack on the boundary)"""
        return value is not None and value >= self.threshold(reference) - 1e-12

    def describe(self) -> str:
        """``1.0% relative`` or ``0.010 absolute``."""
        if self.mode is DropMode.RELATIVE:
            return f"{self.max_drop:.1%} relative"
        return f"{self.max_drop:.3f} absolute"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"max_drop": self.max_drop, "drop_mode": self.mode.value}

    @classmethod
    def from_dict(cls, data: dict) -> AccuracyTarget:
        """Inverse of :meth:`to_dict`."""
        return cls(max_drop=data["max_drop"], mode=DropMode(data["drop_mode"]))
