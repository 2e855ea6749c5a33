"""Recovery before float islands: the search's first move when nothing-kept misses the target.

With ``--recovery auto`` (the default) the artifacts carry the sequential pass's records as they
are. When a speed target's nothing-kept model misses the accuracy target, the search first runs
the recovery method on the low format's records, simulated as that target writes activations,
scores nothing-kept again with them and, if it gained, searches float islands on top of the
recovered records. Islands cost run time on every inference; recovery costs seconds once. The
recovered records are written under the search directory, so a resumed search reads them back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from quantsweep.core.config import Recovery, SweepConfig
from quantsweep.models import load_model
from quantsweep.quant.calibrators import read_act_ranges
from quantsweep.quant.producer_quant import read_producers
from quantsweep.quant.recovery import recover
from quantsweep.quant.scheme import load_records, save_records
from quantsweep.stages.schemes_stage import SchemeSet
from quantsweep.targets import Backend, Objective

LOG = logging.getLogger(__name__)
RECOVERED_DIR = "recovered"
AUTO_METHOD = Recovery.DISTILL  # what ``--recovery auto`` runs in the search


@dataclass(frozen=True)
class RecoveryOutcome:
    """What the search's recovery move did on one target (written into ``search.json``)."""

    method: Recovery
    k0_before: float
    k0_after: float
    seconds: float  # 0 when the recovered records were read back (a resumed search, another target)
    used: bool  # the islands were searched on the recovered records

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**dataclasses.asdict(self), "method": self.method.value}


class RecoveredRecords:
    """Recovered records per (format, activation signedness), made once per evaluate run."""

    def __init__(self, config: SweepConfig, *, candidates_dir: Path, root: Path) -> None:
        self.config, self.candidates_dir, self.root = config, Path(candidates_dir), Path(root)
        self._network = None

    def needed(self, backend: Backend) -> bool:
        """Whether this run's quantizer asks the search to try recovery on ``backend``."""
        return self.config.quantizer.recovery is Recovery.AUTO and backend.objective is Objective.SPEED

    def for_target(
        self, backend: Backend, scheme_set: SchemeSet, records: dict[str, dict], *, images, progress=None
    ) -> tuple[dict[str, dict], float]:
        """``records`` with the low format's replaced by recovered ones, and the seconds spent."""
        fmt = scheme_set.low.as_format()
        if fmt is None or fmt.name not in records:
            return records, 0.0
        signed = "uint8" if backend.placement.asymmetric else "signed"
        path = self.root / RECOVERED_DIR / f"{fmt.name.replace('/', '_')}_{signed}.pt"
        if path.is_file():
            return {**records, fmt.name: load_records(path)}, 0.0
        started = time.perf_counter()
        if self._network is None:  # the checkpoint path the user gave (a pickle), once, only if needed
            self._network = load_model(self.config.model, head=self.config.head).network
        _, ranges = read_act_ranges(self.candidates_dir) or (None, {})
        quantizer = dataclasses.replace(self.config.quantizer, recovery=AUTO_METHOD)
        recovered = recover(
            self._network,
            records[fmt.name],
            images,
            config=quantizer,
            act_ranges=ranges,
            asymmetric=backend.placement.asymmetric,
            progress=progress,
            producers=read_producers(self.candidates_dir),
        )
        save_records(path, recovered)
        return {**records, fmt.name: recovered}, time.perf_counter() - started
