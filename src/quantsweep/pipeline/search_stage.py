"""The search stage: the fewest kept layers meeting an accuracy target, measured on ONNX artifacts."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from quantsweep.config import DropMode
from quantsweep.errors import InputError
from quantsweep.evaluate.onnx_eval import OnnxDetector, accuracy, detections_of
from quantsweep.evaluate.search import search
from quantsweep.export.qdq import NodePlan, materialize
from quantsweep.pipeline.common import ProgressFactory, no_progress
from quantsweep.pipeline.evaluate_stage import (
    RESULT_KIND,
    EvalContext,
    EvalRequest,
    prepare_context,
    score_artifact,
)
from quantsweep.quant.calibrators import read_ranges
from quantsweep.quant.scheme import WEIGHTS_DIR, load_records, records_path
from quantsweep.records import JsonLines, read_json, write_json
from quantsweep.schemes.records import Precision, Scheme
from quantsweep.schemes.writer import INDEX_KIND, SCHEME_KIND

LOG = logging.getLogger(__name__)
RECOMMENDED = "recommended"


@dataclass(frozen=True)
class SearchRequest:
    """The accuracy target and the search's cost bound."""

    schemes_dir: Path
    max_drop: float = 0.01
    drop_mode: DropMode = DropMode.RELATIVE
    max_evals: int = 24


class _ArtifactMeasure:
    """Materializes a kept set, scores it in ONNX Runtime, and remembers every score on disk."""

    def __init__(self, schemes_dir: Path, candidates_dir: Path, context: EvalContext, log: JsonLines) -> None:
        index = read_json(schemes_dir / "schemes_index.json", INDEX_KIND)
        base = Scheme.from_dict(read_json(schemes_dir / index["schemes"][0]["file"], SCHEME_KIND))
        self.layers = sorted(base.layers, key=lambda a: (a.rank is None, a.rank or 0))
        self.low = Precision.from_dict(index["low_precision"])
        self.high = Precision.from_dict(index["high_precision"])
        self.fp32 = onnx.load(str(candidates_dir / "fp32.onnx"))
        self.act_ranges = read_ranges(read_json(candidates_dir / "act_ranges.json", "act_ranges"))
        # the materialize stage's records (GPTQ codes, zero points, corrected biases); none: round to nearest
        self.records = {
            fmt.name: load_records(records_path(candidates_dir / WEIGHTS_DIR, fmt))
            for fmt in (self.low.as_format(), self.high.as_format())
            if fmt is not None and records_path(candidates_dir / WEIGHTS_DIR, fmt).is_file()
        }
        self.context, self.log = context, log
        self.known = {tuple(sorted(r["kept"])): r["score"] for r in log.read()}

    @property
    def ranking(self) -> list[str]:
        return [a.torch_name for a in self.layers]

    def model(self, kept: tuple[str, ...]) -> onnx.ModelProto:
        plans, weights = {}, {}
        for layer in self.layers:
            fmt = (self.high if layer.torch_name in kept else self.low).as_format()
            if fmt is not None:
                rng = None if fmt.act.value == "fp16" else self.act_ranges[layer.torch_name]
                plans[layer.onnx_node] = NodePlan(fmt, act_range=rng)
                record = self.records.get(fmt.name, {}).get(layer.torch_name)
                if record is not None:
                    weights[layer.onnx_node] = record
        return materialize(self.fp32, plans, weights)

    def score(self, acc) -> float:
        if self.context.fp32_map50_95_gt:
            return acc.map50_95_gt
        return acc.map50_95_vs_fp32

    def __call__(self, kept: tuple[str, ...]) -> float:
        key = tuple(sorted(kept))
        if key in self.known:
            return self.known[key]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trial.onnx"
            onnx.save(self.model(kept), str(path))
            detector = OnnxDetector(path, imgsz=self.context.config.imgsz)
            acc = accuracy(
                detections_of(detector, self.context.batch, self.context.detect),
                batch=self.context.batch,
                pseudo=self.context.pseudo,
            )
        value = self.score(acc)
        self.log.append({"kept": list(key), "score": value, "accuracy": acc.to_dict()})
        self.known[key] = value
        return value


def _target(context: EvalContext, request: SearchRequest) -> tuple[float, float, str]:
    reference, metric = context.fp32_map50_95_gt, "map50_95_gt"
    if not reference:  # no labels, or a model that detects nothing real: judge by agreement with FP32
        reference, metric = context.fp32_map50_95_vs_fp32, "map50_95_vs_fp32"
    if request.drop_mode is DropMode.RELATIVE:
        return reference, reference * (1 - request.max_drop), metric
    return reference, reference - request.max_drop, metric


def search_scheme(
    request: SearchRequest,
    *,
    eval_dir: Path,
    eval_request: EvalRequest,
    progress: ProgressFactory = no_progress,
) -> dict[str, Any]:
    """Run the search inside an evaluate run; write ``search/`` and a scored ``recommended.onnx``."""
    if not (0 < request.max_drop < 1):
        raise InputError(f"--max-drop must be between 0 and 1, got {request.max_drop}")
    candidates_dir = Path(eval_request.candidates_dir)
    context, _fp32, _index = prepare_context(candidates_dir, eval_request)
    search_dir = eval_dir / "search"
    measure = _ArtifactMeasure(
        Path(request.schemes_dir), candidates_dir, context, JsonLines(search_dir / "evaluations.jsonl")
    )
    reference, target, metric = _target(context, request)
    with progress(request.max_evals, "search") as step:

        def measured(kept: tuple[str, ...]) -> float:
            score = measure(kept)
            step(f"{len(kept)} kept: {score:.4f}")
            return score

        result = search(measure.ranking, measured, target=target, max_evals=request.max_evals)
    path = search_dir / f"{RECOMMENDED}.onnx"
    onnx.save(measure.model(result.kept), str(path))
    scored = score_artifact(path, context, latency_runs=eval_request.latency_runs)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    summary = {
        "metric": metric,
        "reference": reference,
        "target": target,
        "max_drop": request.max_drop,
        "drop_mode": request.drop_mode.value,
        "max_evals": request.max_evals,
        **asdict(result),
        "low": measure.low.label,
        "high": measure.high.label,
        "onnx": str(path),
        "sha256_16": digest,
    }
    write_json(search_dir / "search.json", "scheme_search", summary)
    write_json(
        eval_dir / "results" / f"{RECOMMENDED}.json",
        RESULT_KIND,
        {
            "name": RECOMMENDED,
            "file": str(path),
            "kept": len(result.kept),
            "kept_layers": list(result.kept),
            "avg_weight_bits": None,
            "target_met": result.target_met,
            **scored,
        },
    )
    return summary
