"""An evaluate run directory: its recorded config (a resume must match it) and each target's results.

Layout: ``eval_config.json``, ``environment.json``, and per target ``results/<target>/models/<name>.json``
(one per model, written as soon as it is scored), ``timing.json`` once the interleaved pass is done,
``recommendation.json``, or ``unavailable.json`` with the reason the target could not run here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep.core.errors import InputError
from quantsweep.core.layout import results_dir
from quantsweep.core.records import read_json, write_json
from quantsweep.core.runs import environment, new_run_dir
from quantsweep.evaluation.scoring import Accuracy
from quantsweep.onnx_graph.candidates import Artifact, CandidatesIndex
from quantsweep.stages.eval_inputs import check_resume
from quantsweep.targets.timing import Timing

CONFIG_KIND = "eval_config"
RESULT_KIND = "candidate_result"
TIMING_KIND = "timing_pass"
RECOMMENDATION_KIND = "recommendation"
UNAVAILABLE_KIND = "target_unavailable"
SKIPPED_KIND = "models_not_scored"
# the recorded settings a resumed run must share with the interrupted one, besides its inputs
# (candidates, data and its content: stages.eval_inputs)
RESUME_KEYS = ("targets", "latency", "accuracy_target")


def scored(acc: Accuracy, *, metric: str, reference: float) -> dict[str, float | None]:
    """A model's score under the run's judging metric, and its drop from the FP32 reference."""
    score = acc.value(metric)
    drop = reference - score
    return {"score": score, "drop": drop, "relative_drop": drop / reference if reference > 0 else None}


class ResultStore:
    """One target's results in an evaluate run, read and written one model at a time."""

    def __init__(
        self, directory: Path, *, target: str, candidates_dir: Path, metric: str, reference: float
    ) -> None:
        self.directory, self.target, self.candidates_dir = directory, target, candidates_dir
        self.metric, self.reference = metric, reference
        self.models = directory / "models"

    def path(self, name: str) -> Path:
        """Where the result of model ``name`` lives."""
        return self.models / f"{name}.json"

    def has(self, name: str) -> bool:
        """Was model ``name`` scored already?"""
        return self.path(name).is_file()

    def write_result(self, record: dict[str, Any], acc: Accuracy, *, worker: dict | None = None) -> None:
        """Write a model's accuracy record (latency comes later, from the timing pass)."""
        payload = {
            **record,
            **({"worker": worker} if worker else {}),
            "target": self.target,
            "accuracy": acc.to_dict(),
            "metric": self.metric,
            **scored(acc, metric=self.metric, reference=self.reference),
            "latency": None,
        }
        write_json(self.path(record["name"]), RESULT_KIND, payload)

    def record_of(self, artifact: Artifact) -> dict[str, Any]:
        """The record of a materialized artifact, before its scores: its index entry and file."""
        return {**artifact.to_dict(), "kept": artifact.kept, "file": str(self.candidates_dir / artifact.file)}

    def write_accuracy(self, artifact: Artifact, acc: Accuracy, *, worker: dict | None = None) -> None:
        """The record of a materialized artifact."""
        self.write_result(self.record_of(artifact), acc, worker=worker)

    def write_timing(self, name: str, timing: Timing, *, worker: dict | None = None) -> None:
        """Add the interleaved pass's timing (and the worker that measured it) to a model's record."""
        record = read_json(self.path(name), RESULT_KIND)
        record["latency"] = {**timing.to_dict(), **({"worker": worker} if worker else {})}
        write_json(self.path(name), RESULT_KIND, record)

    def write_tie_check(
        self, name: str, *, against: str, ratio: float, rounds: int, worker: dict | None = None
    ) -> None:
        """Add to a timed model's record its lower-quartile ratio to ``against`` from a pass of the two
        alone (``evaluate.recommend.undecided_pair``), and the worker that ran it, if not this process."""
        record = read_json(self.path(name), RESULT_KIND)
        check = {"against": against, "lower_quartile_ratio": ratio, "rounds": rounds}
        check |= {"worker": worker} if worker else {}
        record["latency"] = {**record["latency"], "tie_check": check}
        write_json(self.path(name), RESULT_KIND, record)

    def write_skipped(self, name: str, reason: str) -> None:
        """Record that model ``name`` was not scored, and why (``skipped.json``, read by the report)."""
        skipped = self.skipped() | {name: reason}
        write_json(self.directory / "skipped.json", SKIPPED_KIND, {"models": dict(sorted(skipped.items()))})

    def skipped(self) -> dict[str, str]:
        """Models not scored, with the reason."""
        path = self.directory / "skipped.json"
        return read_json(path, SKIPPED_KIND)["models"] if path.is_file() else {}

    def mark_timed(self, names: list[str]) -> None:
        """Record that one pass timed ``names`` together."""
        write_json(self.directory / "timing.json", TIMING_KIND, {"models": sorted(names)})

    def timed(self, names: Iterable[str] | None = None) -> bool:
        """Were ``names`` (default: all current models) timed in one pass?"""
        path = self.directory / "timing.json"
        wanted = sorted(self.all() if names is None else names)
        return path.is_file() and read_json(path, TIMING_KIND)["models"] == wanted

    def all(self) -> dict[str, dict[str, Any]]:
        """Every model's record, by name."""
        return {p.stem: read_json(p, RESULT_KIND) for p in sorted(self.models.glob("*.json"))}

    @staticmethod
    def artifact_path(record: dict[str, Any]) -> Path:
        """The ONNX file a record scored."""
        return Path(record["file"])

    def write_recommendation(self, payload: dict[str, Any]) -> None:
        """The target's recommendation (see ``evaluate.recommend``)."""
        write_json(self.directory / "recommendation.json", RECOMMENDATION_KIND, payload)


@dataclass
class EvalRun:
    """An evaluate run directory and what it was asked to do."""

    directory: Path
    request: Any  # EvalRequest (typed in evaluate_stage; kept loose here to avoid an import cycle)
    index: CandidatesIndex
    targets: tuple[str, ...]
    metric: str  # what every model is judged by (see Accuracy.judging_metric)
    reference: float  # the FP32 model's value of that metric

    @classmethod
    def open(cls, request, *, context, index: CandidatesIndex, out: Path | None, resume: Path | None):
        """A new run directory, or ``resume`` after checking it was made with the same settings."""
        targets = request.targets or tuple(index.targets)
        missing = [t for t in targets if t not in index.targets]
        if missing:
            have = ", ".join(index.targets) or "none"
            raise InputError(f"the candidates have no artifacts for target {missing[0]} (they have: {have})")
        config = {
            "inputs": context.inputs,
            "targets": list(targets),
            "latency": {"rounds": request.latency_rounds, "runs_per_round": request.latency_runs},
            "accuracy_target": request.accuracy_target.to_dict(),
            "detect": context.detect.__dict__,
            "reference": context.reference.to_dict(),
            "metric": context.metric,
        }
        if resume is not None:
            directory = Path(resume)
            check_resume(directory, context.inputs)
            _check_resume(directory, config)
        else:
            model = Path(context.config.model).stem
            directory = new_run_dir(out or Path("runs"), model_name=model, stage="evaluate")
            write_json(directory / "eval_config.json", CONFIG_KIND, config)
            write_json(directory / "environment.json", "environment", environment())
        return cls(directory, request, index, targets, context.metric, context.reference_score)

    def store(self, target: str) -> ResultStore:
        """The results of ``target``."""
        candidates = Path(self.request.candidates_dir).resolve()
        return ResultStore(
            results_dir(self.directory, target),
            target=target,
            candidates_dir=candidates,
            metric=self.metric,
            reference=self.reference,
        )

    def record_unavailable(self, target: str, reason: str) -> None:
        """A target whose runtime cannot run here: said in the report, not silently dropped."""
        path = results_dir(self.directory, target) / "unavailable.json"
        write_json(path, UNAVAILABLE_KIND, {"target": target, "reason": reason})


def _check_resume(directory: Path, config: dict[str, Any]) -> None:
    path = directory / "eval_config.json"
    if not path.is_file():
        raise InputError(f"{directory} is not an evaluate run directory (no eval_config.json)")
    recorded = read_json(path, CONFIG_KIND)
    for key in RESUME_KEYS:
        if recorded.get(key) != config[key]:
            raise InputError(
                f"--resume {directory}: {key} differs from the interrupted run "
                f"({recorded.get(key)!r} there, {config[key]!r} now); start a new run instead"
            )
